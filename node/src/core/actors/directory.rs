//! The remote side of actors: where actors hosted by other peers live, calls waiting for an
//! actor's location, and the actors this node placed on peers.

use shoal_protocol::mesh::PeerKey;
use shoal_protocol::{ActorId, IdMap, TaskId};

/// An actor this node created on a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Where it runs.
    pub(crate) peer: PeerKey,
    /// The task that creates it (kept here: it holds the constructor's arguments).
    pub(crate) task: TaskId,
    /// Restarts used so far.
    pub(crate) restarts: u32,
    /// Lost with its peer and being placed again: a second loss of that peer is not a
    /// second death.
    pub(crate) moving: bool,
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

    /// The lookup of `actor` ended: the calls that waited for it, in order.
    pub(crate) fn located(&mut self, actor: ActorId, found: Option<PeerKey>) -> Vec<TaskId> {
        if let Some(peer) = found {
            self.homes.insert(actor, peer);
        }
        self.pending.remove(&actor).unwrap_or_default()
    }

    /// `actor` was created on `peer` by `task`.
    pub(crate) fn placed(&mut self, actor: ActorId, peer: PeerKey, task: TaskId) {
        let restarts = self.placed.get(&actor).map_or(0, |p| p.restarts);
        self.placed.insert(
            actor,
            Placed {
                peer,
                task,
                restarts,
                moving: false,
            },
        );
        self.homes.insert(actor, peer);
    }

    /// The placement of `actor`, if this node placed it.
    pub(crate) fn placement(&self, actor: &ActorId) -> Option<Placed> {
        self.placed.get(actor).copied()
    }

    /// Forgets the placement of `actor`.
    pub(crate) fn unplace(&mut self, actor: &ActorId) -> Option<Placed> {
        self.placed.remove(actor)
    }

    /// `actor`, placed on a peer, is placed again: one more restart used.
    pub(crate) fn restarting(&mut self, actor: &ActorId) {
        if let Some(p) = self.placed.get_mut(actor) {
            p.restarts += 1;
            p.moving = true;
        }
        self.homes.remove(actor);
    }

    /// Actors placed by this node, with their placements, in a fixed order.
    pub(crate) fn placements(&self) -> Vec<(ActorId, Placed)> {
        let mut v: Vec<(ActorId, Placed)> = self.placed.iter().map(|(a, p)| (*a, *p)).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// `peer` is gone: actors that lived there have no known home.
    pub(crate) fn peer_lost(&mut self, peer: PeerKey) {
        self.homes.retain(|_, p| *p != peer);
    }

    /// Whether nothing is recorded (for leak checks).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.homes.is_empty() && self.pending.is_empty() && self.placed.is_empty()
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
    fn placements_count_restarts() {
        let mut d = Directory::default();
        let a = ActorId([1; 16]);
        d.placed(a, key(1), task(1));
        assert_eq!(d.home(&a), Some(key(1)));
        d.restarting(&a);
        assert_eq!(d.home(&a), None);
        d.placed(a, key(2), task(1));
        assert_eq!(
            d.placement(&a),
            Some(Placed {
                peer: key(2),
                task: task(1),
                restarts: 1,
                moving: false,
            })
        );
        assert_eq!(d.unplace(&a).map(|p| p.restarts), Some(1));
        d.clear_home(&a);
        assert!(d.is_empty());
    }
}
