//! The remote side of actors: where actors hosted by other peers live, calls waiting for an
//! actor's location, and the actors this node placed on peers.

use shoal_protocol::mesh::PeerKey;
use shoal_protocol::{ActorId, ActorToken, IdMap, ObjectId, TaskId};

/// At most this many superseded copies are remembered (the oldest are forgotten first): a
/// peer that never comes back must not make the list grow without end.
const MAX_SUPERSEDED: usize = 4096;

/// An actor this node created on a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Where it runs.
    pub(crate) peer: PeerKey,
    /// The task that creates it (kept here: it holds the constructor's arguments).
    pub(crate) task: TaskId,
    /// Restarts used so far.
    pub(crate) restarts: u32,
    /// Its placement epoch: 0 at its first placement, one more at each after.
    pub(crate) epoch: u32,
    /// Lost with its peer and being placed again: a second loss of that peer is not a
    /// second death.
    pub(crate) moving: bool,
    /// The peer took the actor in (its id came back from there). Until then calls wait
    /// here: the peer may still refuse it, and the actor be placed elsewhere.
    pub(crate) confirmed: bool,
}

/// Actors hosted elsewhere, as this node knows them.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// Where actors hosted elsewhere live.
    homes: IdMap<ActorId, PeerKey>,
    /// Calls waiting for their actor's location, in order.
    pending: IdMap<ActorId, Vec<TaskId>>,
    /// Actors this node created on peers.
    placed: IdMap<ActorId, Placed>,
    /// Placements by their creation's return object: the peer confirms a placement by
    /// sending its value (the actor's id), and reports the actor's end as an error in it.
    by_ret: IdMap<ObjectId, ActorId>,
    /// Copies of actors this node placed on peers it then lost, and placed again (or gave
    /// up): if such a peer was only out of reach (a partition), its copy may still run, and
    /// is ended when the peer is seen again. The actor, the peer, its handles' secret.
    superseded: Vec<(ActorId, PeerKey, ActorToken)>,
    /// The newest placement epoch known of actors placed by other nodes (from their
    /// location records, and from hosts that refused a call as moved), for the most recent
    /// [`MAX_EPOCHS`] actors: calls carry it, so that a superseded copy refuses them.
    epochs: Epochs,
    /// Why actors this node placed on peers ended there for good, for the most recent
    /// [`MAX_ENDED`]: their later calls fail with it (not as actors nobody knows).
    ended: Ended,
}

/// Actors whose end is remembered, at most.
const MAX_ENDED: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(n) => n,
    None => unreachable!(),
};

/// [`Directory::ended`].
#[derive(Debug)]
struct Ended(lru::LruCache<ActorId, shoal_protocol::TaskError>);

impl Default for Ended {
    fn default() -> Self {
        Self(lru::LruCache::new(MAX_ENDED))
    }
}

/// Actors whose newest epoch is remembered, at most.
const MAX_EPOCHS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(1 << 16) {
    Some(n) => n,
    None => unreachable!(),
};

/// [`Directory::epochs`].
#[derive(Debug)]
struct Epochs(lru::LruCache<ActorId, u32>);

impl Default for Epochs {
    fn default() -> Self {
        Self(lru::LruCache::new(MAX_EPOCHS))
    }
}

/// What to do with a call of an actor hosted elsewhere.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Send it to this peer.
    To(PeerKey),
    /// It waits behind a lookup already under way.
    Queued,
    /// It waits; look the actor up.
    Locate,
    /// The actor this node placed ended for good, with this error: the call fails with it.
    Ended(shoal_protocol::TaskError),
}

impl Directory {
    /// Where `actor` lives, if known.
    pub(crate) fn home(&self, actor: &ActorId) -> Option<PeerKey> {
        self.homes.get(actor).copied()
    }

    /// `actor` lives at `peer`.
    pub(crate) fn set_home(&mut self, actor: ActorId, peer: PeerKey) {
        self.homes.insert(actor, peer);
    }

    /// `actor` lives here (again), or nowhere known.
    pub(crate) fn clear_home(&mut self, actor: &ActorId) {
        self.homes.remove(actor);
    }

    /// Routes call `task` of `actor`.
    pub(crate) fn route(&mut self, actor: ActorId, task: TaskId) -> Route {
        if let Some(err) = self.ended.0.get(&actor) {
            return Route::Ended(err.clone());
        }
        // This node placed it: its placement decides, not the mesh's records.
        match self.placed.get(&actor) {
            Some(p) if p.confirmed => return Route::To(p.peer),
            Some(_) => {
                self.pending.entry(actor).or_default().push(task);
                return Route::Queued;
            }
            None => {}
        }
        if let Some(pending) = self.pending.get_mut(&actor) {
            pending.push(task);
            return Route::Queued;
        }
        match self.homes.get(&actor) {
            Some(peer) => Route::To(*peer),
            None => {
                self.pending.insert(actor, vec![task]);
                Route::Locate
            }
        }
    }

    /// The lookup of `actor` ended: the calls that waited for it, in order. An actor this
    /// node placed keeps its calls until its placement is confirmed (the lookup's answer
    /// does not count).
    pub(crate) fn located(&mut self, actor: ActorId, found: Option<PeerKey>) -> Vec<TaskId> {
        if self.placed.contains_key(&actor) {
            return Vec::new();
        }
        if let Some(peer) = found {
            self.homes.insert(actor, peer);
        }
        self.pending.remove(&actor).unwrap_or_default()
    }

    /// The epoch `actor`'s next placement by this node gets: one more than its last.
    pub(crate) fn next_epoch(&self, actor: &ActorId) -> u32 {
        self.placed
            .get(actor)
            .map_or(0, |p| p.epoch.saturating_add(1))
    }

    /// The newest epoch of `actor` this node knows: its own placement's, or what the mesh
    /// told it.
    pub(crate) fn known_epoch(&self, actor: &ActorId) -> u32 {
        match self.placed.get(actor) {
            Some(p) => p.epoch,
            None => self.epochs.0.peek(actor).copied().unwrap_or(0),
        }
    }

    /// `actor` has an incarnation of `epoch` (a location record, or a host's refusal said
    /// so): kept if newer than the one known. Says whether it was.
    pub(crate) fn learn_epoch(&mut self, actor: ActorId, epoch: u32) -> bool {
        if self.placed.contains_key(&actor) {
            return false;
        }
        let known = self.epochs.0.peek(&actor).copied();
        if known.is_some_and(|k| k >= epoch) {
            return false;
        }
        self.epochs.0.put(actor, epoch);
        true
    }

    /// `actor` was sent to `peer` by `task` (whose return object is `ret`) as its
    /// placement `epoch` ([`next_epoch`](Self::next_epoch)); its calls wait until the peer
    /// confirms.
    pub(crate) fn placed(
        &mut self,
        actor: ActorId,
        peer: PeerKey,
        task: TaskId,
        ret: ObjectId,
        epoch: u32,
    ) {
        let restarts = self.placed.get(&actor).map_or(0, |p| p.restarts);
        self.placed.insert(
            actor,
            Placed {
                peer,
                task,
                restarts,
                epoch,
                moving: false,
                confirmed: false,
            },
        );
        self.homes.remove(&actor);
        self.pending.entry(actor).or_default();
        self.by_ret.insert(ret, actor);
    }

    /// The actor placed on `peer` whose creation returns `ret`, if any.
    pub(crate) fn placed_by(&self, ret: &ObjectId, peer: PeerKey) -> Option<ActorId> {
        if self.by_ret.is_empty() {
            return None;
        }
        let actor = *self.by_ret.get(ret)?;
        (self.placed.get(&actor)?.peer == peer).then_some(actor)
    }

    /// `actor`'s peer took it in: the calls that waited, in each caller's order (none if it
    /// was confirmed already).
    pub(crate) fn confirm(&mut self, actor: ActorId) -> Vec<TaskId> {
        let Some(p) = self.placed.get_mut(&actor) else {
            return Vec::new();
        };
        p.confirmed = true;
        self.homes.insert(actor, p.peer);
        self.take_pending(&actor)
    }

    /// `actor`'s peer gave it back (or is gone): its calls wait until it is placed again.
    pub(crate) fn unconfirm(&mut self, actor: &ActorId) {
        if let Some(p) = self.placed.get_mut(actor) {
            p.confirmed = false;
            self.pending.entry(*actor).or_default();
        }
        self.homes.remove(actor);
    }

    /// The calls waiting for `actor`, in each caller's order (calls given back by a peer
    /// join the wait after later ones).
    pub(crate) fn take_pending(&mut self, actor: &ActorId) -> Vec<TaskId> {
        let mut calls = self.pending.remove(actor).unwrap_or_default();
        calls.sort_by_key(|t| t.seq());
        calls
    }

    /// The placement of `actor`, if this node placed it.
    pub(crate) fn placement(&self, actor: &ActorId) -> Option<Placed> {
        self.placed.get(actor).copied()
    }

    /// `actor`, which this node placed on a peer, ended there for good with `err`.
    pub(crate) fn end(&mut self, actor: ActorId, err: shoal_protocol::TaskError) {
        self.ended.0.put(actor, err);
    }

    /// Why `actor` ended for good, if this node remembers.
    pub(crate) fn ended_with(&mut self, actor: &ActorId) -> Option<shoal_protocol::TaskError> {
        self.ended.0.get(actor).cloned()
    }

    /// Forgets the placement of `actor` (the calls waiting for it are the caller's to
    /// take, with [`take_pending`](Self::take_pending)).
    pub(crate) fn unplace(&mut self, actor: &ActorId) -> Option<Placed> {
        let p = self.placed.remove(actor)?;
        self.by_ret.retain(|_, a| a != actor);
        Some(p)
    }

    /// `actor`, placed on a peer, is placed again: one more restart used if the peer had
    /// taken it in.
    pub(crate) fn restarting(&mut self, actor: &ActorId) {
        if let Some(p) = self.placed.get_mut(actor) {
            if p.confirmed {
                p.restarts += 1;
            }
            p.moving = true;
        }
        self.unconfirm(actor);
    }

    /// Actors placed by this node, with their placements, in a fixed order.
    pub(crate) fn placements(&self) -> Vec<(ActorId, Placed)> {
        let mut v: Vec<(ActorId, Placed)> = self.placed.iter().map(|(a, p)| (*a, *p)).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// `actor`'s copy at `peer`, a peer lost, is superseded: to be ended if the peer is seen
    /// again.
    pub(crate) fn supersede(&mut self, actor: ActorId, peer: PeerKey, token: ActorToken) {
        if self.superseded.len() >= MAX_SUPERSEDED {
            self.superseded.remove(0);
        }
        self.superseded.push((actor, peer, token));
    }

    /// The superseded copies at `peer`, seen again (forgotten here).
    pub(crate) fn take_superseded(&mut self, peer: PeerKey) -> Vec<(ActorId, ActorToken)> {
        let mut taken = Vec::new();
        self.superseded.retain(|(a, p, t)| {
            let at = *p == peer;
            if at {
                taken.push((*a, *t));
            }
            !at
        });
        taken
    }

    /// `peer` is gone: actors that lived there have no known home.
    pub(crate) fn peer_lost(&mut self, peer: PeerKey) {
        self.homes.retain(|_, p| *p != peer);
    }

    /// Whether nothing is recorded (for leak checks).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.homes.is_empty()
            && self.pending.is_empty()
            && self.placed.is_empty()
            && self.by_ret.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::ClientId;

    fn key(n: u8) -> PeerKey {
        PeerKey::from_bytes(&[n; 38]).unwrap()
    }

    fn task(n: u64) -> TaskId {
        TaskId::new(ClientId(1), n)
    }

    #[test]
    fn calls_wait_for_one_lookup_in_order() {
        let mut d = Directory::default();
        let a = ActorId([1; 16]);
        assert_eq!(d.route(a, task(1)), Route::Locate);
        assert_eq!(d.route(a, task(2)), Route::Queued);
        assert_eq!(d.located(a, Some(key(3))), vec![task(1), task(2)]);
        assert_eq!(d.route(a, task(3)), Route::To(key(3)));
        d.peer_lost(key(3));
        assert_eq!(d.route(a, task(4)), Route::Locate);
        assert_eq!(d.located(a, None), vec![task(4)]);
        assert!(d.is_empty());
    }

    #[test]
    fn placements_count_restarts_once_confirmed() {
        let mut d = Directory::default();
        let a = ActorId([1; 16]);
        let ret = ObjectId::for_return(task(1), 0);
        assert_eq!(d.next_epoch(&a), 0);
        d.placed(a, key(1), task(1), ret, 0);
        // Not taken in yet: no home, and a loss now costs no restart.
        assert_eq!(d.home(&a), None);
        d.restarting(&a);
        assert_eq!(d.placement(&a).map(|p| p.restarts), Some(0));
        // Each placement has a newer epoch, taken in or not.
        assert_eq!(d.next_epoch(&a), 1);
        d.placed(a, key(2), task(1), ret, 1);
        assert_eq!(
            d.placed_by(&ret, key(1)),
            None,
            "only the peer it was sent to answers"
        );
        assert_eq!(d.placed_by(&ret, key(2)), Some(a));
        assert!(d.confirm(a).is_empty());
        assert_eq!(d.home(&a), Some(key(2)));
        d.restarting(&a);
        assert_eq!(d.home(&a), None);
        d.placed(a, key(3), task(1), ret, d.next_epoch(&a));
        assert_eq!(
            d.placement(&a),
            Some(Placed {
                peer: key(3),
                task: task(1),
                restarts: 1,
                epoch: 2,
                moving: false,
                confirmed: false,
            })
        );
        assert_eq!(d.unplace(&a).map(|p| p.restarts), Some(1));
        assert!(d.take_pending(&a).is_empty());
        d.clear_home(&a);
        assert!(d.is_empty());
    }

    #[test]
    fn the_newest_epoch_known_is_kept_and_a_placement_decides_its_own() {
        let mut d = Directory::default();
        let (a, b) = (ActorId([1; 16]), ActorId([2; 16]));
        assert_eq!(d.known_epoch(&a), 0);
        assert!(d.learn_epoch(a, 2));
        assert!(!d.learn_epoch(a, 1), "an older record changes nothing");
        assert!(!d.learn_epoch(a, 2));
        assert_eq!(d.known_epoch(&a), 2);
        // An actor this node placed: its placement is the truth, not what it hears.
        let ret = ObjectId::for_return(task(7), 0);
        d.placed(b, key(1), task(7), ret, 3);
        assert!(!d.learn_epoch(b, 9));
        assert_eq!(d.known_epoch(&b), 3);
    }

    #[test]
    fn calls_wait_for_a_placement_and_go_in_each_callers_order() {
        let mut d = Directory::default();
        let a = ActorId([1; 16]);
        let ret = ObjectId::for_return(task(100), 0);
        let (early, late) = (TaskId::new(ClientId(2), 1), TaskId::new(ClientId(2), 2));
        d.placed(a, key(1), task(100), ret, 0);
        assert_eq!(d.route(a, late), Route::Queued);
        // A lookup's answer does not release calls of an actor this node placed.
        assert!(d.located(a, Some(key(9))).is_empty());
        assert_eq!(
            d.route(a, early),
            Route::Queued,
            "a call the peer gave back"
        );
        assert_eq!(d.confirm(a), vec![early, late]);
        assert!(d.confirm(a).is_empty(), "confirmed once");
        assert_eq!(d.route(a, task(3)), Route::To(key(1)));
        // The peer gives it back: calls wait again until it is placed anew.
        d.unconfirm(&a);
        assert_eq!(d.route(a, task(4)), Route::Queued);
        assert_eq!(d.home(&a), None);
        d.unplace(&a);
        assert_eq!(d.take_pending(&a), vec![task(4)]);
        assert!(d.is_empty());
    }
}
