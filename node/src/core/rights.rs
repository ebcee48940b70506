//! What peers may ask of this node, and what happens to requests they may not make.
//!
//! Pure bookkeeping with plain values: no I/O, no clock (times come in).
//!
//! A peer reads an object here only if it was given the object's ref (see
//! `objects.rs`), and calls or kills an actor only with the secret of its handles
//! ([`shoal_protocol::ActorToken`]), which only a handle carries. A right given by a third peer travels on another link than the request it
//! allows: a node sends a task to peer B naming this node as a holder of an argument, and
//! sends this node a `Grant` for B, and B's request may come first. So a request from a peer
//! without the right waits here for a grant, [`GRANT_WAIT`] at most, then is refused. A
//! refusal is counted (per kind, for `shoal status`) and logged: at `warn` the first time
//! per peer per [`WARN_EVERY`], at `debug` after that, so that a peer cannot flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shoal_protocol::{ObjectId, PeerKey};

/// How long a request waits for the grant that allows it.
pub const GRANT_WAIT: Duration = Duration::from_secs(5);
/// Requests of one peer waiting for grants at most; more are refused at once.
pub const MAX_WAITING_PER_PEER: usize = 64;
/// A peer's refusals are logged at `warn` at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// A request that needs a right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// `PeerMsg::Fetch` of an object.
    Fetch(ObjectId),
    /// A transfer of an object's bytes (the shell's request number).
    Serve(u64, ObjectId),
}

impl Request {
    /// The object it is about.
    pub(crate) fn object(&self) -> ObjectId {
        match self {
            Request::Fetch(id) | Request::Serve(_, id) => *id,
        }
    }
}

/// What kind of request was refused (the counters of `shoal status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refused {
    /// A read of an object (a fetch or a transfer) without the right.
    Read,
    /// A grant of an object the granting peer may not read itself.
    Grant,
    /// A release of an object the peer held no ref to.
    Release,
    /// A task whose arguments the submitting peer may not read.
    Task,
    /// A call of an actor without its handles' secret.
    Call,
    /// A kill of an actor without its handles' secret.
    Kill,
    /// A cancel of a task by a peer that did not submit it.
    Cancel,
    /// A commit or release of a placement group's bundles by a peer that did not place them.
    Group,
}

impl Refused {
    /// Its name in counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Read => "read",
            Refused::Grant => "grant",
            Refused::Release => "release",
            Refused::Task => "task",
            Refused::Call => "call",
            Refused::Kill => "kill",
            Refused::Cancel => "cancel",
            Refused::Group => "group",
        }
    }
}

#[derive(Debug)]
struct Waiting {
    peer: PeerKey,
    request: Request,
    until: Instant,
}

/// Requests waiting for grants, and refusals.
#[derive(Debug, Default)]
pub(crate) struct Rights {
    waiting: Vec<Waiting>,
    refused: HashMap<Refused, u64>,
    warned: HashMap<PeerKey, Instant>,
}

impl Rights {
    /// Holds `request` of `peer` until a grant allows it or [`GRANT_WAIT`] passes. Says
    /// whether it waits (false: the peer has too many waiting; refuse it now).
    pub(crate) fn wait(&mut self, now: Instant, peer: PeerKey, request: Request) -> bool {
        let of_peer = self.waiting.iter().filter(|w| w.peer == peer).count();
        if of_peer >= MAX_WAITING_PER_PEER {
            return false;
        }
        self.waiting.push(Waiting {
            peer,
            request,
            until: now + GRANT_WAIT,
        });
        true
    }

    /// The requests of `peer` that `allowed` now allows: they leave the wait.
    pub(crate) fn allowed(
        &mut self,
        peer: PeerKey,
        mut allowed: impl FnMut(&ObjectId) -> bool,
    ) -> Vec<Request> {
        let mut out = Vec::new();
        self.waiting.retain(|w| {
            let go = w.peer == peer && allowed(&w.request.object());
            if go {
                out.push(w.request);
            }
            !go
        });
        out
    }

    /// The requests whose wait ended by `now`, with their peers: to refuse.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(PeerKey, Request)> {
        let mut out = Vec::new();
        self.waiting.retain(|w| {
            let done = w.until <= now;
            if done {
                out.push((w.peer, w.request));
            }
            !done
        });
        out
    }

    /// Every waiting request of `peer` (it is gone), or of all peers (`None`: the node
    /// stops).
    pub(crate) fn drain(&mut self, peer: Option<PeerKey>) -> Vec<Request> {
        let mut out = Vec::new();
        self.waiting.retain(|w| {
            let go = peer.is_none_or(|p| p == w.peer);
            if go {
                out.push(w.request);
            }
            !go
        });
        out
    }

    /// When the next wait ends.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.until).min()
    }

    /// Counts a refusal of `peer`'s request and logs it (rate-limited per peer).
    /// `what` names the object or actor asked for.
    pub(crate) fn refuse(
        &mut self,
        now: Instant,
        peer: PeerKey,
        kind: Refused,
        what: impl std::fmt::Display,
    ) {
        *self.refused.entry(kind).or_default() += 1;
        let warn = self
            .warned
            .get(&peer)
            .is_none_or(|t| now.saturating_duration_since(*t) >= WARN_EVERY);
        if warn {
            if self.warned.len() >= 4096 {
                // Bounded: forget the oldest half's times (they may warn again).
                let cutoff = now.checked_sub(WARN_EVERY).unwrap_or(now);
                self.warned.retain(|_, t| *t > cutoff);
            }
            self.warned.insert(peer, now);
            tracing::warn!(%peer, kind = kind.name(), %what,
                "refused a peer's request it may not make (further ones from this peer are logged at debug for a minute)");
        } else {
            tracing::debug!(%peer, kind = kind.name(), %what, "refused a peer's request");
        }
    }

    /// Refusals so far, by kind.
    pub(crate) fn refused(&self) -> Vec<(Refused, u64)> {
        let mut v: Vec<_> = self.refused.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerKey {
        PeerKey::from_bytes(&[n; 8]).unwrap()
    }

    #[test]
    fn a_request_waits_for_its_grant_then_expires() {
        let t0 = Instant::now();
        let mut r = Rights::default();
        let (a, b) = (ObjectId([1; 32]), ObjectId([2; 32]));
        assert!(r.wait(t0, peer(1), Request::Fetch(a)));
        assert!(r.wait(t0, peer(1), Request::Serve(7, b)));
        assert!(r.wait(t0, peer(2), Request::Fetch(a)));
        assert_eq!(r.deadline(), Some(t0 + GRANT_WAIT));
        // A grant of `a` to peer 1 lets its request of `a` go, not peer 2's.
        assert_eq!(r.allowed(peer(1), |id| *id == a), vec![Request::Fetch(a)]);
        assert!(r
            .expired(t0 + GRANT_WAIT - Duration::from_millis(1))
            .is_empty());
        let mut gone = r.expired(t0 + GRANT_WAIT);
        gone.sort_by_key(|(p, _)| *p);
        assert_eq!(
            gone,
            vec![
                (peer(1), Request::Serve(7, b)),
                (peer(2), Request::Fetch(a))
            ]
        );
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn waits_per_peer_are_bounded_and_go_with_the_peer() {
        let t0 = Instant::now();
        let mut r = Rights::default();
        for i in 0..MAX_WAITING_PER_PEER {
            assert!(r.wait(t0, peer(1), Request::Serve(i as u64, ObjectId([0; 32]))));
        }
        assert!(!r.wait(t0, peer(1), Request::Fetch(ObjectId([0; 32]))));
        assert!(r.wait(t0, peer(2), Request::Fetch(ObjectId([0; 32]))));
        assert_eq!(r.drain(Some(peer(1))).len(), MAX_WAITING_PER_PEER);
        assert_eq!(r.drain(None).len(), 1);
    }

    #[test]
    fn refusals_are_counted_by_kind() {
        let t0 = Instant::now();
        let mut r = Rights::default();
        r.refuse(t0, peer(1), Refused::Read, ObjectId([1; 32]));
        r.refuse(t0, peer(1), Refused::Read, ObjectId([1; 32]));
        r.refuse(t0, peer(2), Refused::Release, ObjectId([1; 32]));
        assert_eq!(r.refused(), vec![(Refused::Read, 2), (Refused::Release, 1)]);
    }
}
