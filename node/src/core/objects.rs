//! The object table: every object this node knows of, who keeps it alive, who waits for it,
//! and where copies of it are at other peers.
//!
//! Pure bookkeeping with plain values: no I/O, no clock. The core reads and edits entries,
//! and asks the table which objects are no longer referenced
//! ([`ObjectTable::collect_into`]); what that frees elsewhere (store files, remote copies,
//! DHT announcements) is the core's business.
//!
//! # Lifetime
//!
//! An entry lives while something references it:
//! - `holders`: parties holding a ref, counted as a multiset (a party that `put` equal bytes
//!   twice, or holds two refs, is listed twice and releases twice);
//! - `pins`: tasks that take it as an argument or carry its ref inside them, and objects
//!   whose value holds its ref (`nested`);
//! - `waiters`: parties that asked for its value while it was pending.
//!
//! When all three are empty the entry goes, and the objects it held inside lose one pin each
//! (transitively). A task result whose task is still running is kept only by its holders: if
//! every holder releases it, the entry goes and the late result is discarded.
//!
//! `push_to` (the party owed the value without asking: the owner of the task that makes it)
//! and `dependents` (tasks waiting for it) do not keep an entry alive by themselves: the owner
//! is always a holder too, and every dependent pins it.
//!
//! # Rights
//!
//! A peer reads an object here only if it may ([`ObjEntry::readable_by`]): the core adds a
//! peer to `readers` when it sends the peer the object's ref, and when a peer that may read
//! it grants it to another (`PeerMsg::Grant`).

use shoal_protocol::{ClientId, IdMap, ObjectId, ObjectValue, PeerKey, SharedObject, TaskId};

use super::Party;

/// One object.
#[derive(Debug, Default)]
pub(crate) struct ObjEntry {
    /// Its value, once known.
    pub(crate) value: Option<ObjectValue>,
    /// Parties holding a ref to it (a multiset).
    pub(crate) holders: Vec<Party>,
    /// The party owed the value without asking (the owner of the task that makes it).
    pub(crate) push_to: Option<Party>,
    /// Parties that asked for it while it was pending.
    pub(crate) waiters: Vec<Party>,
    /// Queued or running tasks that take it as an argument.
    pub(crate) dependents: Vec<TaskId>,
    /// Tasks and objects that keep it alive (as an argument, or a ref inside them).
    pub(crate) pins: u32,
    /// Objects whose refs are inside this one: pinned while it lives.
    pub(crate) nested: Vec<ObjectId>,
    /// The process that made it (submitted its task, or put it first).
    pub(crate) owner: Option<ClientId>,
    /// Announced to the mesh's directory as held here.
    pub(crate) provided: bool,
    /// Copies held by other peers.
    pub(crate) remote: Option<Box<RemoteCopy>>,
    /// Peers given its ref (by this node, or by a peer that may read it): they may read it
    /// here. See [`ObjectTable::may_read`].
    pub(crate) readers: Vec<PeerKey>,
    /// The lineage that could make it again was evicted (`--lineage-bytes`).
    pub(crate) lineage_evicted: bool,
    /// The peer that owns it, when that is another peer (a ref that came from it): when it
    /// dies, the value fails with `OwnerDied` unless a live peer holds it.
    pub(crate) owner_peer: Option<PeerKey>,
    /// Its bytes here were pulled from a peer (a copy, for `shoal status` and the metrics).
    pub(crate) pulled: bool,
    /// Refs that peers held when they were written off as lost (a multiset): a release of
    /// one that was on its way then is late, not wrong. See [`ObjectTable::late_release`].
    pub(crate) written_off: Vec<PeerKey>,
}

/// Copies of an object held by peers.
#[derive(Debug, Default)]
pub(crate) struct RemoteCopy {
    /// Size and digest, once known (a large object).
    pub(crate) object: Option<SharedObject>,
    /// Peers that hold a copy (or can say where one is).
    pub(crate) holders: Vec<PeerKey>,
    /// A fetch or pull is under way.
    pub(crate) fetching: bool,
    /// Peers that hold a copy for this node and must be told when it is no longer needed.
    pub(crate) release_to: Vec<PeerKey>,
    /// Its value exists at a holder: tasks that take it are ready (where they run, they
    /// fetch it).
    pub(crate) ready: bool,
    /// Tasks about to run here that wait for a copy here.
    pub(crate) localizing: Vec<TaskId>,
    /// The mesh's directory was asked for holders already.
    pub(crate) asked_dht: bool,
    /// The peer that lent this node its ref (`RemoteTask::lent`): it counts this node as a
    /// holder until told `Release`, which this node says when the entry goes.
    pub(crate) lender: Option<PeerKey>,
}

impl ObjEntry {
    /// Whether its value exists at a peer (a large result left where it was made).
    pub(crate) fn ready_remotely(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.ready)
    }

    /// Whether `peer` may read it here: a peer given its ref (`readers`), its owner's peer
    /// (named by a peer that may read it), one holding a ref through this node or owed its
    /// value (its task's owner), or one this node knows holds a copy (it had it first).
    pub(crate) fn readable_by(&self, peer: PeerKey) -> bool {
        let party = Party::Peer(peer);
        self.readers.contains(&peer)
            || self.owner_peer == Some(peer)
            || self.push_to == Some(party)
            || self.holders.contains(&party)
            || self
                .remote
                .as_ref()
                .is_some_and(|r| r.holders.contains(&peer))
    }

    /// Takes its copies at peers (to let them go), keeping who lent it (still owed a
    /// release when the entry goes).
    pub(crate) fn take_copies(&mut self) -> Option<RemoteCopy> {
        let r = self.remote.take()?;
        if let Some(lender) = r.lender {
            self.remote = Some(Box::new(RemoteCopy {
                lender: Some(lender),
                ..Default::default()
            }));
        }
        Some(*r)
    }

    /// Whether a ref to it lent by a peer is kept alive here by other means, and so is
    /// given back at once: its owner is here, a peer lent it already, or it is lent on to
    /// peers (taking a lender then could make a ring of peers that hold each other).
    pub(crate) fn anchored(&self) -> bool {
        self.owner.is_some()
            || self.remote.as_ref().is_some_and(|r| r.lender.is_some())
            || self.holders.iter().any(|h| matches!(h, Party::Peer(_)))
    }

    /// Whether anything still references it.
    pub(crate) fn referenced(&self) -> bool {
        !self.holders.is_empty() || self.pins > 0 || !self.waiters.is_empty()
    }
}

/// Every object this node knows of.
#[derive(Debug, Default)]
pub(crate) struct ObjectTable {
    map: IdMap<ObjectId, ObjEntry>,
}

impl ObjectTable {
    pub(crate) fn get(&self, id: &ObjectId) -> Option<&ObjEntry> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &ObjectId) -> Option<&mut ObjEntry> {
        self.map.get_mut(id)
    }

    pub(crate) fn contains(&self, id: &ObjectId) -> bool {
        self.map.contains_key(id)
    }

    /// The entry of `id`, made empty if there is none.
    pub(crate) fn entry(&mut self, id: ObjectId) -> &mut ObjEntry {
        self.map.entry(id).or_default()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ObjectId, &ObjEntry)> {
        self.map.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether `peer` may read `id` here (false when it is not here).
    pub(crate) fn may_read(&self, id: &ObjectId, peer: PeerKey) -> bool {
        self.map.get(id).is_some_and(|e| e.readable_by(peer))
    }

    /// The remote side of `id`, if it has one.
    pub(crate) fn remote_mut(&mut self, id: &ObjectId) -> Option<&mut RemoteCopy> {
        self.map.get_mut(id).and_then(|e| e.remote.as_deref_mut())
    }

    /// `party` holds one more ref to each object of `ids` that exists.
    pub(crate) fn hold(&mut self, party: Party, ids: &[ObjectId]) {
        for id in ids {
            if let Some(e) = self.map.get_mut(id) {
                e.holders.push(party);
            }
        }
    }

    /// `party` drops one ref to `id`; once it holds none, it is no longer owed the value.
    /// The caller then [`collect`](Self::collect)s it. Says whether `party` held one (or was
    /// owed the value): a release of nothing changes nothing.
    pub(crate) fn release(&mut self, party: Party, id: &ObjectId) -> bool {
        let Some(e) = self.map.get_mut(id) else {
            return false;
        };
        let mut held = false;
        if let Some(pos) = e.holders.iter().position(|h| *h == party) {
            e.holders.swap_remove(pos);
            held = true;
        }
        // Owed the value while it holds a ref still (a peer lent the ref besides, say).
        if e.push_to == Some(party) && !e.holders.contains(&party) {
            e.push_to = None;
            held = true;
        }
        held
    }

    /// `party` is gone: every ref it held and every wait it had end. Returns the objects
    /// it touched, to [`collect`](Self::collect). A peer written off as lost keeps the
    /// right to read what it held while the object lives here (a loss is not a revocation:
    /// it may be back, after a partition, with tasks that take it).
    pub(crate) fn party_gone(&mut self, party: Party) -> Vec<ObjectId> {
        let mut touched = Vec::new();
        for (id, e) in self.map.iter_mut() {
            let before = (e.holders.len(), e.waiters.len(), e.push_to);
            let had = e.holders.contains(&party) || e.push_to == Some(party);
            if let Party::Peer(peer) = party {
                let held = e.holders.iter().filter(|h| **h == party).count();
                e.written_off.extend(std::iter::repeat_n(peer, held));
            }
            e.holders.retain(|h| *h != party);
            e.waiters.retain(|h| *h != party);
            if e.push_to == Some(party) {
                e.push_to = None;
            }
            if let (true, Party::Peer(peer)) = (had, party) {
                if !e.readers.contains(&peer) {
                    e.readers.push(peer);
                }
            }
            if before != (e.holders.len(), e.waiters.len(), e.push_to) {
                touched.push(*id);
            }
        }
        touched
    }

    /// A release of `id` by `peer`, which holds no ref to it: whether it gives back a ref
    /// the peer held when it was written off as lost (a release sent before it heard of
    /// the loss, or of a lend made just before it). Each such ref is given back once.
    pub(crate) fn late_release(&mut self, peer: PeerKey, id: &ObjectId) -> bool {
        let Some(e) = self.map.get_mut(id) else {
            return false;
        };
        match e.written_off.iter().position(|p| *p == peer) {
            Some(pos) => {
                e.written_off.swap_remove(pos);
                true
            }
            None => false,
        }
    }

    /// `peer` is gone: the refs it lent are owed it no more.
    pub(crate) fn lender_gone(&mut self, peer: PeerKey) {
        for e in self.map.values_mut() {
            if let Some(r) = e.remote.as_mut().filter(|r| r.lender == Some(peer)) {
                r.lender = None;
            }
        }
    }

    /// One more pin on `id`, if it exists. Says whether it does.
    pub(crate) fn pin(&mut self, id: &ObjectId) -> bool {
        match self.map.get_mut(id) {
            Some(e) => {
                e.pins += 1;
                true
            }
            None => false,
        }
    }

    /// One pin less on `id`. The caller then [`collect`](Self::collect)s it.
    pub(crate) fn unpin(&mut self, id: &ObjectId) {
        if let Some(e) = self.map.get_mut(id) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Records the refs inside object `id` and pins them while it lives. Refs to objects
    /// already freed (or to itself) are skipped and returned.
    pub(crate) fn set_nested(&mut self, id: ObjectId, nested: Vec<ObjectId>) -> Vec<ObjectId> {
        let mut kept = Vec::with_capacity(nested.len());
        let mut skipped = Vec::new();
        for inner in nested {
            if inner != id && self.pin(&inner) {
                kept.push(inner);
            } else {
                skipped.push(inner);
            }
        }
        if let Some(e) = self.map.get_mut(&id) {
            e.nested.extend(kept);
        } else {
            // Nothing to keep them for: undo.
            for inner in &kept {
                self.unpin(inner);
            }
        }
        skipped
    }

    /// [`collect_into`](Self::collect_into) a new vector.
    #[cfg(test)]
    pub(crate) fn collect(&mut self, id: ObjectId) -> Vec<(ObjectId, ObjEntry)> {
        let mut freed = Vec::new();
        self.collect_into(id, &mut freed);
        freed
    }

    /// Removes `id` if nothing references it, then whatever that leaves unreferenced
    /// (objects whose refs were inside it). Appends the removed entries to `freed`, for the
    /// caller to free what they had elsewhere: a caller that keeps one buffer allocates
    /// nothing per call (this runs several times per task).
    pub(crate) fn collect_into(&mut self, id: ObjectId, freed: &mut Vec<(ObjectId, ObjEntry)>) {
        // Allocated only when a freed entry held refs.
        let mut next = Vec::new();
        let mut first = Some(id);
        while let Some(id) = first.take().or_else(|| next.pop()) {
            if self.map.get(&id).is_none_or(|e| e.referenced()) {
                continue;
            }
            let Some(e) = self.map.remove(&id) else {
                continue;
            };
            for inner in &e.nested {
                if let Some(x) = self.map.get_mut(inner) {
                    x.pins = x.pins.saturating_sub(1);
                    next.push(*inner);
                }
            }
            freed.push((id, e));
        }
    }

    /// Every id, sorted.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<ObjectId> {
        let mut v: Vec<ObjectId> = self.map.keys().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Party = Party::Proc(1);
    const B: Party = Party::Proc(2);

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 32])
    }

    fn put(t: &mut ObjectTable, party: Party, n: u8) -> ObjectId {
        let e = t.entry(id(n));
        e.holders.push(party);
        e.value = Some(ObjectValue::Inline(vec![n]));
        id(n)
    }

    fn freed(v: Vec<(ObjectId, ObjEntry)>) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = v.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn holders_are_a_multiset() {
        let mut t = ObjectTable::default();
        let x = put(&mut t, A, 1);
        t.hold(A, &[x]);
        t.hold(B, &[x]);
        t.release(A, &x);
        assert!(
            freed(t.collect(x)).is_empty(),
            "A still holds one ref, B one"
        );
        t.release(A, &x);
        assert!(freed(t.collect(x)).is_empty(), "B holds one");
        // Releasing what one does not hold changes nothing.
        t.release(A, &x);
        assert!(freed(t.collect(x)).is_empty());
        t.release(B, &x);
        assert_eq!(freed(t.collect(x)), vec![x]);
        assert!(t.ids().is_empty());
    }

    #[test]
    fn pins_and_waiters_keep_an_object() {
        let mut t = ObjectTable::default();
        let x = put(&mut t, A, 1);
        assert!(t.pin(&x));
        t.release(A, &x);
        assert!(t.collect(x).is_empty(), "a task argument");
        t.entry(x).waiters.push(B);
        t.unpin(&x);
        assert!(t.collect(x).is_empty(), "a waiter");
        t.get_mut(&x).unwrap().waiters.clear();
        assert_eq!(freed(t.collect(x)), vec![x]);
        assert!(!t.pin(&x), "a freed object cannot be pinned");
    }

    #[test]
    fn nested_refs_live_as_long_as_their_container() {
        let mut t = ObjectTable::default();
        let (inner, deeper) = (put(&mut t, A, 1), put(&mut t, A, 2));
        let outer = put(&mut t, A, 3);
        assert!(t.set_nested(inner, vec![deeper]).is_empty());
        // A ref to itself, and to an object never seen, are not kept.
        assert_eq!(
            t.set_nested(outer, vec![inner, outer, id(9)]),
            vec![outer, id(9)]
        );
        t.release(A, &inner);
        t.release(A, &deeper);
        assert!(t.collect(inner).is_empty() && t.collect(deeper).is_empty());
        // The container goes, and with it everything it kept, transitively.
        t.release(A, &outer);
        assert_eq!(freed(t.collect(outer)), vec![inner, deeper, outer]);
        assert!(t.ids().is_empty());
    }

    #[test]
    fn a_gone_party_releases_everything_it_held() {
        let mut t = ObjectTable::default();
        let (x, y) = (put(&mut t, A, 1), put(&mut t, B, 2));
        t.hold(A, &[x, y]);
        let pending = id(3);
        let e = t.entry(pending);
        e.holders.push(A);
        e.push_to = Some(A);
        e.waiters.push(A);
        let mut touched = t.party_gone(A);
        touched.sort();
        assert_eq!(touched, vec![x, y, pending]);
        let mut all = Vec::new();
        for id in touched {
            all.extend(freed(t.collect(id)));
        }
        all.sort();
        // y is still B's.
        assert_eq!(all, vec![x, pending]);
        assert_eq!(t.ids(), vec![y]);
        assert!(t.get(&y).unwrap().push_to.is_none());
    }

    #[test]
    fn a_peer_is_a_party_of_its_own() {
        let mut t = ObjectTable::default();
        let peer = Party::Peer(PeerKey::from_bytes(&[7; 38]).unwrap());
        let x = put(&mut t, peer, 1);
        t.hold(A, &[x]);
        t.party_gone(peer);
        assert!(t.collect(x).is_empty(), "A still holds it");
        assert_eq!(t.get(&x).unwrap().holders, vec![A]);
    }

    #[test]
    fn a_written_off_peer_gives_back_each_ref_it_held_once() {
        let mut t = ObjectTable::default();
        let key = PeerKey::from_bytes(&[7; 38]).unwrap();
        let peer = Party::Peer(key);
        let x = put(&mut t, A, 1);
        t.hold(peer, &[x, x]);
        assert!(
            !t.late_release(key, &x),
            "it holds refs: a release is no late one"
        );
        t.party_gone(peer);
        assert_eq!(t.get(&x).unwrap().holders, vec![A]);
        // Two releases were on their way; a third is one it never held.
        assert!(!t.release(peer, &x));
        assert!(t.late_release(key, &x));
        assert!(t.late_release(key, &x));
        assert!(!t.late_release(key, &x));
        assert_eq!(t.get(&x).unwrap().holders, vec![A]);
    }

    #[test]
    fn set_nested_on_a_freed_object_keeps_nothing() {
        let mut t = ObjectTable::default();
        let inner = put(&mut t, A, 1);
        t.set_nested(id(5), vec![inner]);
        assert_eq!(t.get(&inner).unwrap().pins, 0);
    }
}
