//! The core's side of the mesh: spilling tasks to peers with room, running tasks for peers,
//! moving objects between peers, routing actor calls, and recovering when a peer is lost.
//!
//! A peer is a [`Party`] of its own: the tasks it submits here, the objects it holds here and
//! the values it waits for use the same bookkeeping as a local process's, and what the core
//! would tell a process is turned into [`PeerMsg`]s for it. Placement decisions come from
//! the pure rules in [`super::sched::placement`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use shoal_protocol::mesh::{PeerKey, PeerMsg, RemoteTask, RemoteValue};
use shoal_protocol::{
    ActorId, ActorInfo, ActorToken, Arg, BinaryId, CreateOutcome, ObjectId, ObjectValue,
    SharedObject, TaskError, TaskId, TaskKind, ToClient, CPU,
};

use super::actors::directory::Route;
use super::rights::{Refused, Request};
use super::sched::placement::{self, Demand, Placement};
use super::spill::MAX_HOPS;
use super::store::{After, Resume};
use super::{
    Asked, ConnId, Counted, FetchFailure, Job, JobDone, NameAsker, NodeCore, Output, Party,
    ServedObject,
};
use crate::store::{Holder, StoreFault};

/// Why a task goes back to a peer this node declared lost.
const LOST_YOU: &str = "the node it was sent to lost your node";
/// Why an actor's copy at a peer ends: its creator's node lost that peer and placed the
/// actor again elsewhere (or gave it up).
const SUPERSEDED: &str =
    "superseded: the node that placed it lost this node and placed it again elsewhere (or gave it up)";
/// Why a call goes back to the peer that sent it: its actor lives there, as far as the
/// node it was sent to knows.
const ACTOR_HERE: &str = "its actor lives at your node now";

/// A large value from a peer is only taken with its digest, which every copy is checked
/// against: one without is malformed, and taken as the object being unavailable there.
pub(super) fn with_digest(peer: PeerKey, id: ObjectId, value: RemoteValue) -> RemoteValue {
    match value {
        RemoteValue::Shared { object, .. } if object.digest.is_none() => {
            tracing::warn!(%peer, object = %id, "a large value from a peer without its digest; taken as unavailable");
            RemoteValue::Error(TaskError::ObjectUnavailable {
                id,
                message: format!("peer {peer} sent it without its digest"),
            })
        }
        value => value,
    }
}

fn peers_from(bytes: &[Vec<u8>]) -> Vec<PeerKey> {
    bytes
        .iter()
        .filter_map(|b| PeerKey::from_bytes(b))
        .collect()
}

impl NodeCore {
    /// Sends what the core would tell a process to a peer, as the peer's message.
    pub(super) fn tell_peer_as_client(&mut self, peer: PeerKey, msg: ToClient) {
        let msg = match msg {
            ToClient::Object { id, value } => PeerMsg::Object {
                id,
                value: match value {
                    ObjectValue::Inline(v) => RemoteValue::Inline(v),
                    ObjectValue::Error(e) => RemoteValue::Error(e),
                    ObjectValue::Shared(object) if object.digest.is_none() => {
                        // A put not hashed yet: it leaves with its digest.
                        self.when_digested(id, Resume::TellPeer(peer, id));
                        return;
                    }
                    ObjectValue::Shared(object) => {
                        // A copy pulled here may be listed too; this node holds one.
                        let mut holders: Vec<Vec<u8>> =
                            self.me.iter().map(|m| m.to_vec()).collect();
                        if let Some(r) = self.objects.get(&id).and_then(|e| e.remote.as_ref()) {
                            holders.extend(
                                r.holders.iter().filter(|p| **p != peer).map(|p| p.to_vec()),
                            );
                        }
                        RemoteValue::Shared { object, holders }
                    }
                },
                lent: Vec::new(),
            },
            ToClient::ActorFound {
                request,
                actor,
                held,
            } => PeerMsg::ActorFound {
                request,
                actor,
                held,
                counted_at: None,
            },
            other => {
                tracing::debug!(%peer, msg = ?std::mem::discriminant(&other), "a message with no meaning for a peer; dropped");
                return;
            }
        };
        self.tell_peer(peer, msg);
    }

    pub(super) fn peer_msg(&mut self, now: Instant, peer: PeerKey, mut msg: PeerMsg) {
        // Refs lent with the message are this node's (held at `peer`) while it is handled,
        // and after, for as long as something here keeps them.
        let (lent, carrier) = match &mut msg {
            PeerMsg::Submit(rt) => (std::mem::take(&mut rt.lent), None),
            PeerMsg::Object { id, lent, .. } => (std::mem::take(lent), Some(*id)),
            PeerMsg::StreamItem {
                task, index, lent, ..
            } => (
                std::mem::take(lent),
                Some(ObjectId::for_return(*task, *index)),
            ),
            PeerMsg::ActorFound { held, .. } | PeerMsg::HandleLent { held, .. } => {
                (held.iter().copied().collect(), None)
            }
            _ => (Vec::new(), None),
        };
        if lent.is_empty() {
            return self.handle_peer_msg(now, peer, msg);
        }
        self.borrow(peer, &lent);
        self.handle_peer_msg(now, peer, msg);
        // The value that carried them holds them while it lives here.
        if let Some(c) = carrier {
            if self.objects.get(&c).is_some_and(|e| e.nested.is_empty()) {
                self.set_nested(c, lent.clone());
            }
        }
        for id in lent {
            self.maybe_free(id);
        }
    }

    fn handle_peer_msg(&mut self, now: Instant, peer: PeerKey, msg: PeerMsg) {
        let party = Party::Peer(peer);
        match msg {
            PeerMsg::Submit(rt) => self.remote_submit(now, peer, rt),
            msg @ (PeerMsg::GroupPrepare { .. }
            | PeerMsg::GroupPrepared { .. }
            | PeerMsg::GroupCommit { .. }
            | PeerMsg::GroupRelease { .. }
            | PeerMsg::GroupRemove { .. }) => self.group_msg(now, peer, msg),
            PeerMsg::CodeRejected { task, reason } => {
                // Only for a task this node sent that peer (so what is remembered is bounded
                // by this node's own binaries).
                let sent = self.spill.spilled_to(&task) == Some(peer)
                    || self.placed_on(task, peer).is_some();
                let binary = self.tasks.get(&task).map(|e| e.spec.binary);
                let (true, Some(binary)) = (sent, binary) else {
                    tracing::debug!(task = %task, %peer, "a code rejection of a task not sent there; ignored");
                    return;
                };
                tracing::info!(task = %task, %binary, %peer, %reason, "a peer rejected a task's code; placing it elsewhere");
                self.spill.code_rejected(binary, peer, reason.clone(), now);
                let reason = format!("code rejected: {reason}");
                self.peer_msg(now, peer, PeerMsg::Refuse { task, reason });
            }
            PeerMsg::Refuse { task, reason } => {
                if let Some(actor) = self.placed_on(task, peer) {
                    tracing::debug!(actor = %actor, %peer, %reason, "peer gave an actor back; placing it again");
                    self.directory.unconfirm(&actor);
                    self.spill.refused(task, peer, now);
                    self.place_task(now, task);
                    return;
                }
                if self.spill.spilled_to(&task) != Some(peer) {
                    return;
                }
                self.spill.unspill(&task);
                tracing::debug!(task = %task, %peer, %reason, "peer refused a task; placing it again");
                self.spill.refused(task, peer, now);
                let actor = match self.tasks.get(&task).map(|e| &e.spec.kind) {
                    Some(TaskKind::ActorMethod { actor, .. }) => Some(*actor),
                    _ => None,
                };
                if let Some(actor) = actor {
                    let here = self.actors.get(&actor).is_some()
                        || self.directory.placement(&actor).is_some();
                    if reason == ACTOR_HERE && !here {
                        // Each node thinks the actor lives at the other: it lives nowhere.
                        self.directory.clear_home(&actor);
                        self.fail_task(now, task, TaskError::NoSuchActor { actor });
                    } else {
                        self.run_again_here(now, task);
                    }
                } else {
                    self.requeue(now, task);
                }
            }
            PeerMsg::Object { id, value, .. } => self.remote_object(now, peer, id, value),
            PeerMsg::Fetch { id } => {
                if self.check_read(now, peer, Request::Fetch(id)) {
                    self.fetch_requested(now, peer, id);
                }
            }
            PeerMsg::Grant { to, ids } => self.granted(now, peer, to, ids),
            PeerMsg::StateQuery { query, q } => self.state_queried(now, peer, query, q),
            PeerMsg::Cancel {
                task,
                force,
                recursive,
            } => self.cancel_request(now, party, task, force, recursive),
            PeerMsg::StreamItem {
                task, index, value, ..
            } => self.peer_stream_item(now, peer, task, index, value),
            PeerMsg::StreamTaken { task, taken } => self.stream_taken(party, task, taken),
            PeerMsg::Log { owner, lines } => self.peer_logs(peer, owner, lines),
            PeerMsg::StateAnswer { query, answer } => self.state_answered(now, peer, query, answer),
            PeerMsg::Release { ids } => {
                for id in ids {
                    if self.objects.release(party, &id) {
                        self.maybe_free(id);
                    } else if self.objects.late_release(peer, &id) {
                        tracing::debug!(object = %id, %peer, "a release of a ref written off with its peer");
                    } else if self.objects.contains(&id) && self.lineage.get(&id).is_none() {
                        // Not held by it: nothing changes (a peer releases only its own refs).
                        // (One made again here from its lineage is a new entry: a release of
                        // a ref to the one before is late, not wrong.)
                        self.rights.refuse(now, peer, Refused::Release, id);
                    }
                }
            }
            PeerMsg::Kill {
                actor,
                no_restart,
                drain,
                reason,
                token,
                moved_to,
            } => {
                let known = self
                    .actor_token(&actor)
                    .or_else(|| self.awaiting_actor_token(&actor));
                if known.is_some_and(|t| t != token) {
                    self.rights.refuse(now, peer, Refused::Kill, actor);
                    return;
                }
                if self.actors.get(&actor).is_none() && self.directory.placement(&actor).is_some() {
                    // An actor this node sent on: the request follows it.
                    self.end_remote(now, actor, no_restart, drain, &reason, token);
                    return;
                }
                if no_restart && self.actors.get(&actor).is_none() {
                    // Its creation may still wait here for its binary: it ends there.
                    self.drop_awaiting_actor(actor, &reason);
                }
                if drain {
                    if self.actors.out_of_scope(actor) {
                        self.end_out_of_scope(now, actor);
                    }
                } else if no_restart {
                    if self.actors.get(&actor).is_some_and(|a| !a.is_dead()) {
                        tracing::info!(actor = %actor, %peer, %reason, "actor killed at a peer's request");
                        self.kill_actor(now, actor, TaskError::ActorKilled { actor, reason });
                    }
                    // Its creator's node is done with it: nothing is kept of it here.
                    self.actors.forget_if_dead(actor);
                    let moved = moved_to.as_deref().and_then(PeerKey::from_bytes);
                    if let Some(home) = moved.filter(|p| Some(*p) != self.me) {
                        tracing::info!(actor = %actor, %home, "an actor moved: calls made here go to its new home");
                        self.directory.set_home(actor, home);
                    }
                } else {
                    self.kill_request(now, party, actor, false, token);
                }
            }
            PeerMsg::LookupActor { request, name } => {
                let actor = self.actors.lookup(&name);
                // Lent to the peer if its handles are counted here; else where they are.
                let (held, counted_at) = match &actor {
                    Some(a) => self.hold_handle(party, a.actor_id),
                    None => (None, None),
                };
                let msg = PeerMsg::ActorFound {
                    request,
                    actor,
                    held,
                    counted_at: counted_at.map(|p| p.to_vec()),
                };
                self.tell_peer(peer, msg);
            }
            PeerMsg::ActorFound {
                request,
                actor,
                held,
                counted_at,
            } => {
                let asker = match self.name_lookups.get(&request) {
                    Some(l) if l.peer == peer => match l.asked {
                        Asked::Name { conn, request } => Some((conn, request)),
                        Asked::Claim { task } => {
                            self.name_lookups.remove(&request);
                            let counted_at = counted_at.as_deref().and_then(PeerKey::from_bytes);
                            return self.claim_answered(now, task, actor, held, counted_at);
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let Some((conn, asked)) = asker else {
                    tracing::debug!(%peer, request, "an ActorFound nobody asked it for; ignored");
                    return;
                };
                self.name_lookups.remove(&request);
                if let Some(a) = &actor {
                    self.directory.set_home(a.actor_id, peer);
                }
                let counted_at = counted_at.as_deref().and_then(PeerKey::from_bytes);
                if let (Some(info), None, Some(at)) = (&actor, held, counted_at) {
                    // Its handles are counted at its creator's node: a handle from there.
                    return self.ask_lend(now, conn, asked, info.clone(), at);
                }
                self.found_for(conn, asked, actor, held);
            }
            PeerMsg::LendHandle {
                request,
                actor,
                token,
            } => {
                let held = match self.handles_counted(actor) {
                    Counted::Here(h) if self.actor_token(&actor) == Some(token) => {
                        self.objects.hold(party, &[h]);
                        Some(h)
                    }
                    Counted::Here(_) => {
                        tracing::warn!(actor = %actor, %peer, "a peer asked for a handle with a wrong secret; refused");
                        None
                    }
                    _ => None,
                };
                self.tell_peer(peer, PeerMsg::HandleLent { request, held });
            }
            PeerMsg::HandleLent { request, held } => {
                let asked = match self.name_lookups.get(&request) {
                    // (Only the questions that a lend answers.)
                    Some(l)
                        if l.peer == peer
                            && matches!(l.asked, Asked::Handle { .. } | Asked::Nest { .. }) =>
                    {
                        self.name_lookups.remove(&request).map(|l| l.asked)
                    }
                    _ => None,
                };
                match asked {
                    Some(Asked::Handle {
                        conn,
                        request,
                        actor,
                    }) => {
                        // None: its last handle went meanwhile, and it is ending.
                        let actor = held.map(|_| actor);
                        self.found_for(conn, request, actor, held);
                    }
                    Some(Asked::Nest { ret, actor }) => match held {
                        Some(h) if self.objects.contains(&ret) => self.set_nested(ret, vec![h]),
                        Some(_) => {}
                        None => {
                            tracing::debug!(actor = %actor, "a get-or-create found an actor whose last handle went meanwhile")
                        }
                    },
                    _ => {
                        tracing::debug!(%peer, request, "a HandleLent nobody asked it for; ignored")
                    }
                }
            }
        }
    }

    /// A peer wants object `id`: its value now if ready, when ready otherwise; for a large
    /// object only peers hold, where it is.
    fn fetch_requested(&mut self, now: Instant, peer: PeerKey, id: ObjectId) {
        let elsewhere = self
            .objects
            .get(&id)
            .filter(|e| e.value.is_none())
            .and_then(|e| e.remote.as_ref())
            .and_then(|r| Some((r.object?, r.holders.iter().map(|p| p.to_vec()).collect())));
        if let Some((object, holders)) = elsewhere {
            let msg = PeerMsg::object(id, RemoteValue::Shared { object, holders });
            self.tell_peer(peer, msg);
            return;
        }
        // (An object unknown here is not searched for on a peer's behalf: it is lost.)
        self.get(now, Party::Peer(peer), id);
    }

    /// A process asks for an object this node never heard of: look for a holder in the
    /// mesh's directory (large `put` objects are announced there). Says whether a search
    /// started.
    pub(super) fn fetch_unknown(&mut self, conn: ConnId, id: ObjectId) -> bool {
        if self.me.is_none() {
            return false;
        }
        let party = Party::Proc(conn);
        let e = self.objects.entry(id);
        e.waiters.push(party);
        // It asks through a ref it holds (its `Hold` found nothing here to count).
        if !e.holders.contains(&party) {
            e.holders.push(party);
        }
        e.remote = Some(Default::default());
        self.start_fetch(id);
        true
    }

    /// A value from a peer: a result of a task sent there, or an object fetched.
    fn remote_object(&mut self, now: Instant, peer: PeerKey, id: ObjectId, value: RemoteValue) {
        let value = with_digest(peer, id, value);
        // The id of an actor placed on `peer`: it took the actor in (or the actor ended).
        if let Some(actor) = self.directory.placed_by(&id, peer) {
            self.placement_answered(now, peer, actor, &value);
        }
        // The result of a task this node sent to `peer`?
        let mut task = self.spill.task_of_result(&id, peer);
        let ours = task.is_some();
        if task.is_some_and(|t| self.tasks.get(&t).is_some_and(|e| e.ret != id)) {
            // Another return of a task with several: its value, ready before the first
            // return is. The task ends with its first return; a failure comes with that one
            // too (and then fails this with it).
            if let RemoteValue::Error(_) = &value {
                return;
            }
            task = None;
        }
        if let (
            Some(task),
            RemoteValue::Error(TaskError::WorkerDied { .. } | TaskError::OutOfMemory { .. }),
        ) = (task, &value)
        {
            if self.retry_returned(now, peer, task) {
                return;
            }
        }
        if let (Some(task), RemoteValue::Error(TaskError::PeerLost { peer: named })) =
            (task, &value)
        {
            // The peer itself wrote this node off (during a partition, say) and dropped the
            // task; sent on a link that outlived the loss, this can reach a run sent there
            // again after a heal: the task runs again (its budget allowing) rather than
            // ending with another run's loss.
            if *named == peer.to_string() && self.retry_returned(now, peer, task) {
                return;
            }
        }
        if let (
            Some(task),
            RemoteValue::Error(
                TaskError::ObjectLost { id: arg } | TaskError::ObjectUnavailable { id: arg, .. },
            ),
        ) = (task, &value)
        {
            if self.arg_lost(now, peer, task, *arg) {
                return;
            }
        }
        if let (Some(task), RemoteValue::Error(TaskError::ActorMoved { actor, epoch, .. })) =
            (task, &value)
        {
            if self.follow_move(now, peer, task, *actor, *epoch) {
                return;
            }
        }
        if let (Some(task), RemoteValue::Shared { .. } | RemoteValue::Inline(_)) = (task, &value) {
            // A large result stays at that peer: if every copy is lost, it is made again
            // from this (and so may results made from it, small ones too).
            self.keep_lineage(task);
        }
        if let Some(task) = task {
            let demand = self.tasks.get(&task).map(|e| e.spec.resources.clone());
            if !matches!(value, RemoteValue::Error(_)) {
                self.other_returns_lost(now, task);
            }
            self.spill.unspill(&task);
            self.spill.forget(&task);
            if let (Some(l), Some(d)) = (self.spill.peers.get_mut(&peer), demand) {
                l.task_returned(d);
            }
            self.finish_task(now, task);
            // Its peer has room again: tasks waiting for one may go.
            self.spill_pass(now);
        }
        let Some(e) = self.objects.get_mut(&id) else {
            // Nobody wants it any more: let the holder drop its copy. (Its task's other
            // returns may still be wanted, and fail with it.)
            if let RemoteValue::Shared { .. } = &value {
                self.tell_peer(peer, PeerMsg::Release { ids: vec![id] });
            }
            let failed = match &value {
                RemoteValue::Error(err) => Some(err),
                _ => None,
            };
            self.first_return_ready(now, id, failed);
            return;
        };
        if e.value.is_some() {
            let kept = e
                .remote
                .as_ref()
                .is_some_and(|r| r.release_to.contains(&peer));
            if matches!(value, RemoteValue::Shared { .. }) && !kept {
                // Made here meanwhile (a retry): the peer's copy is not needed.
                self.tell_peer(peer, PeerMsg::Release { ids: vec![id] });
            }
            return;
        }
        // Only the peer that ran the task, or one asked for the object, may give its value.
        let asked = e.remote.as_ref().is_some_and(|r| r.holders.contains(&peer));
        if !ours && !asked {
            tracing::warn!(object = %id, %peer, "a value from a peer that was not asked for it; ignored");
            if let RemoteValue::Shared { .. } = &value {
                // (A result of a task this node took back from that peer, say.) The peer
                // keeps a copy for this node until told otherwise.
                self.tell_peer(peer, PeerMsg::Release { ids: vec![id] });
            }
            return;
        }
        if let Some(r) = e.remote.as_mut() {
            r.fetching = false;
        }
        match value {
            RemoteValue::Inline(v) => self.object_ready(now, id, ObjectValue::Inline(v)),
            RemoteValue::Error(err) => self.object_ready(now, id, ObjectValue::Error(err)),
            RemoteValue::Shared { object, holders } => {
                let r = e.remote.get_or_insert_with(Default::default);
                r.object = Some(object);
                r.holders = peers_from(&holders);
                // The peers this node gave refs to may read it at its holders (one that made
                // it again after every copy was lost, say, knows none of them yet).
                for h in r.holders.iter().filter(|h| Some(**h) != self.me) {
                    for reader in e.readers.iter().filter(|p| *p != h) {
                        let grant = PeerMsg::Grant {
                            to: reader.to_vec(),
                            ids: vec![id],
                        };
                        self.out.push_back(Output::ToPeer {
                            peer: *h,
                            msg: grant,
                        });
                    }
                }
                if ours && !r.release_to.contains(&peer) {
                    // The peer keeps the result for this node until told otherwise.
                    r.release_to.push(peer);
                }
                let was_ready = std::mem::replace(&mut r.ready, true);
                let localizing = !r.localizing.is_empty();
                let dependents = e.dependents.clone();
                // Large results stay where they were made until someone here reads them.
                if !e.waiters.is_empty() || localizing {
                    self.start_fetch(id);
                }
                if !was_ready {
                    // Tasks that take it may be placed now: near a holder, ideally. (Tasks
                    // sent to peers while it was there before it was made again have it.)
                    for t in dependents {
                        if self.spill.spilled_to(&t).is_some() {
                            continue;
                        }
                        let Some(entry) = self.tasks.get_mut(&t) else {
                            continue;
                        };
                        entry.missing = entry.missing.saturating_sub(1);
                        if entry.missing == 0 {
                            self.deps_ready(now, t);
                        }
                    }
                }
            }
        }
    }

    /// A task sent to `peer` failed there because its worker died (or was killed for
    /// memory, or the peer wrote this node off): it runs again, from here, if its budget
    /// allows. Says whether it does.
    fn retry_returned(&mut self, now: Instant, peer: PeerKey, task: TaskId) -> bool {
        let Some(entry) = self.tasks.get_mut(&task) else {
            return false;
        };
        if entry.retries_left == 0 || entry.is_call() {
            return false;
        }
        entry.retries_left -= 1;
        self.metrics.tasks_retried += 1;
        tracing::info!(task = %task, %peer, retries_left = entry.retries_left, "a task failed at a peer (its worker died, or the peer dropped it); retrying it");
        let demand = entry.spec.resources.clone();
        self.spill.unspill(&task);
        if let Some(l) = self.spill.peers.get_mut(&peer) {
            l.task_returned(demand);
        }
        self.requeue(now, task);
        true
    }

    /// Gets object `id` here: asks a peer that knows it, or pulls its bytes once known.
    pub(super) fn start_fetch(&mut self, id: ObjectId) {
        let Some(me) = self.me else { return };
        let Some(e) = self.objects.get_mut(&id) else {
            return;
        };
        if e.value.is_some() {
            return;
        }
        let Some(r) = e.remote.as_mut() else {
            return;
        };
        if r.fetching {
            return;
        }
        let spill = &self.spill;
        let holders: Vec<PeerKey> = r
            .holders
            .iter()
            .filter(|p| **p != me && spill.alive(p))
            .copied()
            .collect();
        if holders.is_empty() && !r.asked_dht {
            // Nobody known holds it (any more): ask the mesh-wide directory once.
            r.asked_dht = true;
            r.fetching = true;
            self.out.push_back(Output::Job(Job::FindProviders { id }));
            return;
        }
        let now = self.now;
        if holders.is_empty() {
            // Every copy is lost: its owner makes it again, if it can.
            r.fetching = false;
            // Dead: written off, and not heard from since (a peer just back, whose report
            // has not come yet, is not).
            if let Some(owner) = e.owner_peer.filter(|o| self.spill.written_off(o)) {
                let error = TaskError::OwnerDied {
                    peer: owner.to_string(),
                };
                self.object_ready(now, id, ObjectValue::Error(error));
                return;
            }
            let error = match self.reconstruct(now, id) {
                Ok(_) => return,
                Err(why) => why.error(id),
            };
            self.object_ready(now, id, ObjectValue::Error(error));
            return;
        }
        r.fetching = true;
        if self.store.index.location(&id) == Some(crate::store::Location::Writing) {
            // A pull of it is under way already (or a writer fills it here): its end makes
            // the value.
            return;
        }
        match r.object {
            None => self.tell_peer(holders[0], PeerMsg::Fetch { id }),
            Some(object) => match self.store_reserve(
                id,
                object.size,
                Holder::Node,
                After::PullReady {
                    id,
                    object,
                    holders,
                },
            ) {
                Ok(CreateOutcome::Exists) => {
                    // Equal bytes are here already (a content-addressed put).
                    self.object_ready(now, id, ObjectValue::Shared(object));
                }
                // The pull starts once its file exists.
                Ok(CreateOutcome::Write) => {}
                // Room held by writers or pinned objects may be freed: it waits for it.
                Err(_) if self.pull_waits(now, id, object.size) => {}
                Err(err) => {
                    tracing::warn!(object = %id, error = %err, "no room to pull an object");
                    let value = ObjectValue::Error(TaskError::ObjectUnavailable {
                        id,
                        message: err.to_string(),
                    });
                    self.object_ready(now, id, value);
                }
            },
        }
    }

    /// The end of a job.
    pub(super) fn job_done(&mut self, now: Instant, done: JobDone) {
        match done {
            JobDone::Pulled {
                pull,
                id,
                object,
                result,
            } => {
                if self.store.pulls.get(&id) != Some(&pull) {
                    // Its reservation was dropped meanwhile (nobody wanted the object any
                    // more); a newer pull may be filling a new one.
                    tracing::debug!(object = %id, pull, "a pull that was given up ended");
                    return;
                }
                self.store.pulls.remove(&id);
                if result.is_ok() {
                    self.metrics.pulls += 1;
                    self.metrics.pulled_bytes += object.size;
                }
                self.pulled(now, id, object, result)
            }
            JobDone::BinaryFetched { binary, result } => self.binary_fetched(now, binary, result),
            JobDone::ProvidersFound { id, peers } => {
                if let Some(r) = self.objects.remote_mut(&id) {
                    r.fetching = false;
                    for p in &peers {
                        if !r.holders.contains(p) {
                            r.holders.push(*p);
                        }
                    }
                    if !peers.is_empty() {
                        tracing::debug!(object = %id, holders = peers.len(), "object holders found in the directory");
                    }
                    self.start_fetch(id);
                }
            }
            JobDone::ActorLocated { actor, found } => self.actor_located(now, actor, found),
            JobDone::NameResolved {
                asker: NameAsker::Claim(n),
                name,
                found,
            } => self.claim_resolved(now, n, name, found),
            JobDone::NameResolved {
                asker: NameAsker::Proc { conn, request },
                name,
                found,
            } => match found {
                // Its peer tells the actor (and the secret of its handles), if it is in view
                // (a record may name a peer written off since).
                Some((actor, peer)) if Some(peer) != self.me && self.spill.in_view(&peer) => {
                    self.directory.set_home(actor, peer);
                    let n = self.next_lookup;
                    self.next_lookup += 1;
                    let lookup = super::NameLookup {
                        asked: Asked::Name { conn, request },
                        peer,
                        deadline: now + super::NAME_LOOKUP_TIMEOUT,
                    };
                    self.name_lookups.insert(n, lookup);
                    self.tell_peer(peer, PeerMsg::LookupActor { request: n, name });
                }
                _ => self.tell_proc(
                    conn,
                    ToClient::ActorFound {
                        request,
                        actor: None,
                        held: None,
                    },
                ),
            },
        }
    }

    /// The partial file of a copy to pull exists (or could not be made).
    pub(super) fn pull_ready(
        &mut self,
        now: Instant,
        pull: u64,
        id: ObjectId,
        object: SharedObject,
        holders: Vec<PeerKey>,
        made: Result<(), StoreFault>,
    ) {
        if !self.objects.contains(&id) {
            // Nobody wants it any more.
            self.store_remove(&id);
            return;
        }
        if made.is_ok() && !self.store.index.reserved_by(&id, Holder::Node) {
            // Given up meanwhile (it is being made again here).
            tracing::debug!(object = %id, "a pull given up before it started");
            return;
        }
        match made {
            Ok(()) => {
                tracing::debug!(object = %id, size = object.size, holders = holders.len(), "pulling an object");
                self.store.pulls.insert(id, pull);
                self.out.push_back(Output::Job(Job::Pull {
                    id,
                    object,
                    holders,
                    pull,
                }));
            }
            Err(fault) => {
                tracing::warn!(object = %id, error = %fault, "cannot make the file of a copy to pull");
                if self.store.index.reserved_by(&id, Holder::Node) {
                    self.store.index.remove(&id);
                }
                if let Some(r) = self.objects.remote_mut(&id) {
                    r.fetching = false;
                }
                let message = fault.to_string();
                let value = ObjectValue::Error(TaskError::ObjectUnavailable { id, message });
                self.object_ready(now, id, value);
            }
        }
    }

    fn pulled(
        &mut self,
        now: Instant,
        id: ObjectId,
        object: SharedObject,
        result: Result<(), String>,
    ) {
        if let Some(r) = self.objects.remote_mut(&id) {
            r.fetching = false;
        }
        match result {
            Ok(()) => {
                let after = move |new| After::Pulled { id, object, new };
                if let Err(e) = self.store_seal(id, id, object, after) {
                    self.store_remove(&id);
                    let message = e.to_string();
                    let value = ObjectValue::Error(TaskError::ObjectUnavailable { id, message });
                    self.pulled_sealed(now, id, value);
                }
            }
            Err(message) => {
                tracing::warn!(object = %id, %message, "pull failed");
                self.store_remove(&id);
                // No holder could give it: made again by its owner, if this node is that.
                if self.lineage.get(&id).is_some() && self.reconstruct(now, id).is_ok() {
                    return;
                }
                let value = ObjectValue::Error(TaskError::ObjectUnavailable { id, message });
                self.pulled_sealed(now, id, value);
            }
        }
    }

    /// A pulled copy is in its file (or the pull failed).
    pub(super) fn pulled_sealed(&mut self, now: Instant, id: ObjectId, value: ObjectValue) {
        let Some(e) = self.objects.get_mut(&id) else {
            self.store_remove(&id);
            return;
        };
        e.pulled = matches!(value, ObjectValue::Shared(_));
        self.object_ready(now, id, value);
    }

    // ---- lending ----

    /// Lends `peer` the refs `msg` carries inside it (see `RemoteTask::lent`): `peer` holds
    /// each here until it says `Release`. (Also to the peer that lent one here, which gives
    /// it back at once: the list tells the receiver every ref the value holds, so that the
    /// value pins them there.)
    pub(super) fn lend(&mut self, peer: PeerKey, msg: &mut PeerMsg) {
        let (refs, lent) = match msg {
            PeerMsg::Submit(rt) => (rt.spec.nested.clone(), &mut rt.lent),
            PeerMsg::Object { id, value, lent } if !matches!(value, RemoteValue::Error(_)) => {
                (self.nested_of(id), lent)
            }
            PeerMsg::StreamItem {
                task,
                index,
                value,
                lent,
            } if !matches!(value, RemoteValue::Error(_)) => {
                (self.nested_of(&ObjectId::for_return(*task, *index)), lent)
            }
            _ => return,
        };
        lent.clear();
        let party = Party::Peer(peer);
        for id in refs {
            let Some(e) = self.objects.get_mut(&id) else {
                // Gone here already: nothing to lend (the peer's process holds nothing
                // there either, as with a ref to an object freed before it was sent).
                continue;
            };
            e.holders.push(party);
            lent.push(id);
        }
    }

    /// `id` is made here (a task for it runs here): it no longer hangs from `lender`, the
    /// peer that lent its ref (taken off the entry), which is given it back. (That peer, or
    /// one it hangs from, owns the task and holds the result here: each would keep the
    /// other alive for good.)
    pub(super) fn unlend(&mut self, id: ObjectId, lender: PeerKey) {
        tracing::debug!(object = %id, %lender, "a ref lent here is made here: given back");
        self.tell_peer(lender, PeerMsg::Release { ids: vec![id] });
    }

    fn nested_of(&self, id: &ObjectId) -> Vec<ObjectId> {
        self.objects
            .get(id)
            .map(|e| e.nested.clone())
            .unwrap_or_default()
    }

    /// `peer` lent this node `ids`: each entry (made if new) takes `peer` as its lender,
    /// unless something else keeps it alive, in which case the lend goes back at once.
    fn borrow(&mut self, peer: PeerKey, ids: &[ObjectId]) {
        let mut back = Vec::new();
        for id in ids {
            let e = self.objects.entry(*id);
            if e.anchored() {
                back.push(*id);
                continue;
            }
            let value_here = e.value.is_some();
            let r = e.remote.get_or_insert_with(Default::default);
            r.lender = Some(peer);
            // It can say where a copy is (it fetches one for this node if need be).
            if !value_here && !r.holders.contains(&peer) {
                r.holders.push(peer);
            }
        }
        if !back.is_empty() {
            self.tell_peer(peer, PeerMsg::Release { ids: back });
        }
    }

    // ---- rights ----

    /// The refs `msg` carries become `peer`'s rights to read them here; peers this node
    /// names as holders of them are told too (`PeerMsg::Grant`), before the message goes.
    pub(super) fn confer_rights(&mut self, peer: PeerKey, msg: &PeerMsg) {
        let mut ids: Vec<ObjectId> = Vec::new();
        match msg {
            PeerMsg::Submit(rt) => {
                ids.extend(rt.spec.args.iter().filter_map(|a| match a {
                    Arg::Ref(id) => Some(*id),
                    Arg::Value(_) => None,
                }));
                ids.extend(rt.spec.nested.iter().copied());
            }
            PeerMsg::Object { id, value, .. } if !matches!(value, RemoteValue::Error(_)) => {
                ids.push(*id);
                if let Some(e) = self.objects.get(id) {
                    // The refs inside its value go with it.
                    ids.extend(e.nested.iter().copied());
                }
            }
            _ => return,
        }
        let mut grants: Vec<(PeerKey, Vec<ObjectId>)> = Vec::new();
        for id in ids {
            let Some(e) = self.objects.get_mut(&id) else {
                continue;
            };
            // (A reader for good: a hold it has now, as a lend, goes when it gives it back.)
            if !e.readers.contains(&peer) {
                e.readers.push(peer);
            }
            let Some(r) = e.remote.as_ref() else {
                continue;
            };
            for holder in r
                .holders
                .iter()
                .filter(|h| **h != peer && Some(**h) != self.me)
            {
                match grants.iter_mut().find(|(h, _)| h == holder) {
                    Some((_, v)) => v.push(id),
                    None => grants.push((*holder, vec![id])),
                }
            }
        }
        for (holder, ids) in grants {
            let to = peer.to_vec();
            self.out.push_back(Output::ToPeer {
                peer: holder,
                msg: PeerMsg::Grant { to, ids },
            });
        }
    }

    /// Peer `from` gave refs of `ids` to peer `to`: `to` may read those `from` may read.
    fn granted(&mut self, now: Instant, from: PeerKey, to: Vec<u8>, ids: Vec<ObjectId>) {
        let Some(to) = PeerKey::from_bytes(&to) else {
            tracing::warn!(peer = %from, "a grant to a malformed peer id; ignored");
            return;
        };
        for id in ids {
            let Some(e) = self.objects.get_mut(&id) else {
                // Not here (any more): nothing to read.
                continue;
            };
            if !e.readable_by(from) {
                self.rights.refuse(now, from, Refused::Grant, id);
                continue;
            }
            if !e.readable_by(to) {
                e.readers.push(to);
            }
        }
        let objects = &self.objects;
        let go = self.rights.allowed(to, |id| objects.may_read(id, to));
        for request in go {
            self.allowed(now, to, request);
        }
    }

    /// Whether `peer` may make `request` now. If not, the request waits for a grant (see
    /// [`super::rights`]) or is refused; an object that is not here is answered as usual
    /// (not found: nothing to protect).
    fn check_read(&mut self, now: Instant, peer: PeerKey, request: Request) -> bool {
        let id = request.object();
        if !self.objects.contains(&id) || self.objects.may_read(&id, peer) {
            return true;
        }
        if !self.rights.wait(now, peer, request) {
            self.rights.refuse(now, peer, Refused::Read, id);
            self.refuse_request(peer, request);
        }
        false
    }

    /// A waiting request whose right arrived.
    fn allowed(&mut self, now: Instant, peer: PeerKey, request: Request) {
        match request {
            Request::Fetch(id) => self.fetch_requested(now, peer, id),
            Request::Serve(n, id) => self.serve(n, id),
        }
    }

    /// Requests whose wait for a grant ended: refused.
    pub(super) fn rights_expired(&mut self, now: Instant) {
        for (peer, request) in self.rights.expired(now) {
            self.rights
                .refuse(now, peer, Refused::Read, request.object());
            self.refuse_request(peer, request);
        }
    }

    /// Answers a refused request: the peer learns it may not read the object.
    fn refuse_request(&mut self, peer: PeerKey, request: Request) {
        match request {
            Request::Fetch(id) => {
                let value = RemoteValue::Error(TaskError::NotAllowed { id });
                self.tell_peer(peer, PeerMsg::object(id, value));
            }
            Request::Serve(..) => self.refuse_waiting(request),
        }
    }

    /// Ends a waiting request with nothing (its peer is gone, or the node stops; a transfer
    /// must be answered for the shell to let its stream go).
    pub(super) fn refuse_waiting(&mut self, request: Request) {
        if let Request::Serve(request, _) = request {
            self.out.push_back(Output::Serve {
                request,
                object: None,
            });
        }
    }

    /// A peer asks for the bytes of object `id` ([`super::Input::Serve`]).
    pub(super) fn serve_peer(&mut self, now: Instant, request: u64, peer: PeerKey, id: ObjectId) {
        if self.check_read(now, peer, Request::Serve(request, id)) {
            self.serve(request, id);
        }
    }

    /// A peer asks for the bytes of object `id`: answered with the object pinned in memory
    /// until [`object_served`](Self::object_served), once it is there.
    pub(super) fn serve(&mut self, request: u64, id: ObjectId) {
        let object = match self.objects.get(&id).and_then(|e| e.value.as_ref()) {
            Some(ObjectValue::Shared(o)) if !self.stopping && o.digest.is_none() => {
                self.when_digested(id, Resume::Serve(request, id));
                return;
            }
            Some(ObjectValue::Shared(o)) if !self.stopping => *o,
            _ => {
                self.out.push_back(Output::Serve {
                    request,
                    object: None,
                });
                return;
            }
        };
        let object = match (self.readable(id), object.digest) {
            (Ok(ObjectValue::Shared(_)), Some(digest)) => {
                self.store.index.pin(&id);
                Some(ServedObject {
                    id,
                    size: object.size,
                    digest,
                })
            }
            (Ok(_), _) => None,
            (Err(op), _) => {
                self.park(op, Resume::Serve(request, id));
                return;
            }
        };
        self.out.push_back(Output::Serve { request, object });
    }

    /// A transfer of `id` opened by [`Input::Serve`] ended.
    ///
    /// [`Input::Serve`]: super::Input::Serve
    pub fn object_served(&mut self, id: ObjectId) {
        self.store.index.unpin(&id);
    }

    // ---- placement ----

    /// Whether `task` is one this node may send to a peer.
    fn spillable(&self, task: &TaskId) -> bool {
        self.me.is_some()
            && self.tasks.get(task).is_some_and(|e| {
                matches!(e.spec.kind, TaskKind::Function | TaskKind::CreateActor(_))
                    && e.hops < MAX_HOPS
            })
    }

    /// Gets copies here of the task's arguments that only peers hold; says whether the
    /// task must wait for them (it is placed again when they arrive).
    pub(super) fn localize_args(&mut self, task: TaskId) -> bool {
        let Some(entry) = self.tasks.get(&task) else {
            return false;
        };
        let remote: Vec<ObjectId> = entry
            .arg_refs()
            .filter(|id| {
                self.objects
                    .get(id)
                    .is_some_and(|e| e.value.is_none() && e.ready_remotely())
            })
            .collect();
        if remote.is_empty() {
            return false;
        }
        for id in &remote {
            if let Some(r) = self.objects.remote_mut(id) {
                r.localizing.push(task);
            }
        }
        if let Some(entry) = self.tasks.get_mut(&task) {
            entry.missing += remote.len();
        }
        for id in remote {
            self.start_fetch(id);
        }
        true
    }

    /// Queues a task here, once copies of its arguments are here.
    fn run_here(&mut self, now: Instant, task: TaskId) {
        if self.localize_args(task) {
            return;
        }
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let binary = self.envs.key_for(&entry.spec, &mut self.sched);
        let demand = entry.spec.resources.clone();
        let TaskKind::CreateActor(create) = &entry.spec.kind else {
            if matches!(entry.spec.kind, TaskKind::Function) && self.result_here(now, task) {
                return;
            }
            self.sched.submit(now, task, binary, demand);
            return;
        };
        // An actor coming back here after its peer died is registered here again.
        let actor = create.actor_id;
        if self.actors.get(&actor).is_none() {
            let (create, class, owner) = (
                create.clone(),
                entry.spec.function.clone(),
                entry.spec.owner,
            );
            if let Err(e) = self.actors.register(task, &class, &create, owner) {
                self.fail_task(now, task, e);
                return;
            }
            self.directory.clear_home(&actor);
            self.directory.unplace(&actor);
            self.announce_actor(actor);
            self.sched.submit_actor(now, task, binary, demand);
            // The calls that waited for its placement queue here now.
            for t in self.directory.take_pending(&actor) {
                self.run_again_here(now, t);
            }
            return;
        }
        self.sched.submit_actor(now, task, binary, demand);
    }

    /// Decides where a task whose arguments are ready runs: here, at a peer, or later.
    pub(super) fn place_task(&mut self, now: Instant, task: TaskId) {
        if self.park_in_group(now, task) {
            return;
        }
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let demand = entry.spec.resources.clone();
        let here_allowed = self.runs_here_allowed(&entry.spec);
        if !self.spillable(&task) {
            if here_allowed {
                self.run_here(now, task);
            } else {
                // Only another node may run it, and it cannot go to one.
                let demand = super::strategy::describe(&entry.spec);
                let total = format!(
                    "{} here, and it cannot be sent to a peer",
                    self.sched.total()
                );
                self.fail_task(now, task, TaskError::Infeasible { demand, total });
            }
            return;
        }
        match self.placement(now, task) {
            Placement::Local => self.run_here(now, task),
            Placement::Spill(peer) => match self.tasks.get(&task).map(|e| &e.spec.kind) {
                Some(TaskKind::CreateActor(c)) => {
                    let actor = c.actor_id;
                    self.spill_actor(now, peer, task, actor);
                }
                _ => self.spill_to(peer, task),
            },
            Placement::Wait | Placement::Infeasible
                if here_allowed && self.sched.total().contains(&demand) =>
            {
                self.run_here(now, task)
            }
            Placement::Wait => {
                self.spill.want_loads(1, &demand);
                self.spill.infeasible.forget(&task);
                self.spill.remote_wait.push(task);
                self.spill.no_room = Some(task);
            }
            Placement::Infeasible => {
                // A sample may just not show the peers that have it.
                self.spill.want_loads(1, &demand);
                let (wait, binary) = match self.tasks.get(&task) {
                    Some(e) => (e.spec.wait_for_resources, e.spec.binary),
                    None => return,
                };
                let rejected = self.spill.code_rejections(&binary, now);
                // Only peers that rejected its code could ever run it (those that refused
                // it for now aside): no use waiting. Or nobody took it in the grace period.
                let only_rejecters = !rejected.is_empty() && {
                    let rejecters: Vec<PeerKey> = rejected.iter().map(|(p, _)| *p).collect();
                    self.placement_without(task, &rejecters) == Placement::Infeasible
                };
                let grace_over = !wait && self.spill.infeasible.infeasible(task, now);
                if !wait && (only_rejecters || (grace_over && !rejected.is_empty())) {
                    self.spill.infeasible.forget(&task);
                    let reason = rejected
                        .iter()
                        .map(|(p, r)| format!("peer {p}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    self.fail_task(now, task, TaskError::CodeRejected { reason });
                } else if grace_over {
                    self.spill.infeasible.forget(&task);
                    let total = self.sched.total().to_string();
                    let demand = match self.tasks.get(&task) {
                        Some(e) => super::strategy::describe(&e.spec),
                        None => demand.to_string(),
                    };
                    self.fail_task(
                        now,
                        task,
                        TaskError::Infeasible {
                            demand,
                            total: format!("{total} here, and no peer of the mesh has it"),
                        },
                    );
                } else {
                    self.spill.remote_wait.push(task);
                }
            }
        }
    }

    /// Where `task` goes: here, to a peer (it may be sent on up to [`MAX_HOPS`] times), or
    /// nowhere yet.
    fn placement(&mut self, now: Instant, task: TaskId) -> Placement<PeerKey> {
        let mut refused = self.spill.refused_by(&task, now);
        // Peers that rejected the binary's code are not asked again for a while.
        if let Some(entry) = self.tasks.get(&task) {
            let rejecters = self.spill.code_rejections(&entry.spec.binary, now);
            refused.extend(rejecters.into_iter().map(|(p, _)| p));
        }
        self.placement_without(task, &refused)
    }

    /// Where `task` goes, `refused` left out.
    fn placement_without(&self, task: TaskId, refused: &[PeerKey]) -> Placement<PeerKey> {
        let Some(entry) = self.tasks.get(&task) else {
            return Placement::Wait;
        };
        // Data locality: bytes of the task's arguments each peer holds.
        let mut arg_bytes: HashMap<PeerKey, u64> = HashMap::new();
        for id in entry.arg_refs() {
            if let Some(r) = self.objects.get(&id).and_then(|e| e.remote.as_ref()) {
                let size = r.object.map_or(0, |o| o.size);
                for p in &r.holders {
                    *arg_bytes.entry(*p).or_default() += size;
                }
            }
        }
        let demand = Demand {
            resources: entry.spec.resources.clone(),
            binary: entry.spec.binary,
            target: self.spill.target.clone(),
            hops: entry.hops,
        };
        let actor = matches!(entry.spec.kind, TaskKind::CreateActor(_));
        let mut candidates = self.spill.candidates(entry.spec.binary, &arg_bytes, actor);
        // Its strategy and labels: the peers they rule out are no candidates.
        let rule = self.rule(&entry.spec, entry.hops);
        let bounds = self.bounds(&entry.spec);
        if !bounds.is_open() {
            candidates.retain(|c| {
                let labels = self.spill.peers.get(&c.peer).map(|l| &l.report.labels);
                bounds.allows(Some(c.peer), labels.map_or(&[][..], |l| l.as_slice()))
            });
        }
        placement::place_with(
            &demand,
            self.sched.free(),
            self.sched.total(),
            &candidates,
            refused,
            MAX_HOPS,
            &rule,
        )
    }

    /// Moves waiting tasks to peers that have room.
    pub(super) fn spill_pass(&mut self, now: Instant) {
        if self.me.is_none() {
            return;
        }
        // Tasks only peers can run.
        let waiting = std::mem::take(&mut self.spill.remote_wait);
        let mut rest = waiting.into_iter();
        for t in rest.by_ref() {
            self.place_task(now, t);
            // Back in the queue: nobody has room now; the others wait too (in order).
            if self.spill.no_room == Some(t) {
                break;
            }
        }
        self.spill.remote_wait.extend(rest);
        // (Whether a peer has room costs a look at each peer's load: only when something
        // waits here.)
        let nothing_queued = self.sched.queued() == 0 && self.sched.actors_queued() == 0;
        if nothing_queued {
            return;
        }
        if !self.spill.peers.values().any(|l| l.has_room()) {
            // A sample may not show the peers with room: ask a few (for as many tasks as
            // wait here beyond this node's own slots, which free up meanwhile).
            let waiting = self.sched.queued() + self.sched.actors_queued();
            self.spill
                .want_loads(waiting, &shoal_protocol::ResourceSet::default());
            return;
        }
        // Actors waiting here for resources (others' actors hold them) while a peer has room.
        // A peer's actor that waited here a whole pass goes back to the node that placed it,
        // which places it again (with the calls that came here meanwhile).
        for task in self.sched.queued_actors() {
            let Some(entry) = self.tasks.get_mut(&task) else {
                continue;
            };
            let TaskKind::CreateActor(c) = &entry.spec.kind else {
                continue;
            };
            let actor = c.actor_id;
            if let Party::Peer(owner) = entry.owner {
                entry.passes_waited += 1;
                if entry.passes_waited >= 2 {
                    self.give_back_actor(now, task, actor, owner);
                }
                continue;
            }
            match self.placement(now, task) {
                Placement::Spill(peer) => {
                    self.sched.end_actor(now, task);
                    self.spill_actor(now, peer, task, actor);
                }
                _ => break,
            }
        }
        // Tasks queued here while a peer has room.
        if self.sched.queued() == 0 {
            return;
        }
        let mut moved = std::collections::HashSet::new();
        for (task, _, _) in self.sched.queued_tasks() {
            if !self.spillable(&task) {
                // A peer's task that waited here for a whole pass goes back to its owner,
                // which places it again (the resources it was sent for went to others
                // since: an actor may hold them for good).
                if self.give_back(task) {
                    moved.insert(task);
                }
                continue;
            }
            match self.placement(now, task) {
                Placement::Spill(peer) => {
                    moved.insert(task);
                    self.spill_to(peer, task);
                }
                // Nobody has room: later tasks of other shapes may still fit somewhere, but
                // keep the pass short.
                _ => break,
            }
        }
        if !moved.is_empty() {
            self.sched.remove_queued(|t| !moved.contains(&t));
        }
        // Tasks still wait here after every peer in view with room took its share: a sample
        // may not show the others (a full view asks nobody).
        let waiting = self.sched.queued();
        if waiting > 0 {
            self.spill
                .want_loads(waiting, &shoal_protocol::ResourceSet::default());
        }
    }

    /// Returns a peer's function task waiting in the queue here to its owner once it has
    /// waited a whole spill pass, as if it had been refused; says whether it did (the
    /// caller takes it out of the queue).
    fn give_back(&mut self, task: TaskId) -> bool {
        let Some(entry) = self.tasks.get_mut(&task) else {
            return false;
        };
        let Party::Peer(owner) = entry.owner else {
            return false;
        };
        if !matches!(entry.spec.kind, TaskKind::Function) {
            return false;
        }
        entry.passes_waited += 1;
        if entry.passes_waited < 2 {
            return false;
        }
        let (ret, span) = (entry.ret, entry.span.clone());
        let more = entry.more.clone();
        let _entered = span.enter();
        tracing::debug!(task = %task, %owner, "a peer's task waited here while others had room; giving it back");
        let reason = "it waited here while other peers had room".to_string();
        self.tell_peer(owner, PeerMsg::Refuse { task, reason });
        // As if it had never come: the owner's holds on its results go with it.
        self.finish_task(self.now, task);
        self.more_returns.remove(&ret);
        for id in std::iter::once(ret).chain(more.iter().copied()) {
            self.objects.release(Party::Peer(owner), &id);
            self.maybe_free(id);
        }
        true
    }

    /// Sends `task` to `peer` (a link that cannot take it reports the peer lost, and the
    /// task is placed again then).
    fn spill_to(&mut self, peer: PeerKey, task: TaskId) {
        let Some(rt) = self.remote_task(task) else {
            return;
        };
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let (ret, span) = (entry.ret, entry.span.clone());
        let more = entry.more.clone();
        let _entered = span.enter();
        let demand = rt.spec.resources.clone();
        tracing::debug!(task = %task, function = rt.spec.function, %peer, "task spilled to a peer");
        self.metrics.tasks_spilled += 1;
        self.tell_peer(peer, PeerMsg::Submit(Box::new(rt)));
        self.spill.spilled(task, ret, &more, peer, Some(demand));
        self.stream_sent(task);
    }

    /// The task as a peer receives it: small ready arguments inline, the others with where
    /// to fetch them.
    fn remote_task(&self, task: TaskId) -> Option<RemoteTask> {
        let me = self.me?.to_vec();
        let entry = self.tasks.get(&task)?;
        let mut spec = entry.spec.clone();
        // Retries are this node's to decide (it owns the budget): a peer whose worker dies
        // says so, and the task is placed again from here.
        spec.max_retries = 0;
        let mut locations = Vec::new();
        for arg in spec.args.iter_mut() {
            let Arg::Ref(id) = arg else { continue };
            let id = *id;
            match self.objects.get(&id).and_then(|e| e.value.as_ref()) {
                Some(ObjectValue::Inline(v)) => *arg = Arg::Value(v.clone()),
                _ => {
                    let mut holders = vec![me.clone()];
                    if let Some(r) = self.objects.get(&id).and_then(|e| e.remote.as_ref()) {
                        holders.extend(r.holders.iter().map(|p| p.to_vec()));
                    }
                    locations.push((id, holders));
                }
            }
        }
        for id in &spec.nested {
            locations.push((*id, vec![me.clone()]));
        }
        let owners = locations
            .iter()
            .filter_map(|(id, _)| Some((*id, self.owner_of(id)?.to_vec())))
            .collect();
        let actor_epoch = match &spec.kind {
            TaskKind::ActorMethod { actor, .. } => self.directory.known_epoch(actor),
            _ => 0,
        };
        Some(RemoteTask {
            hops: entry.hops + 1,
            target: self.spill.target.clone(),
            locations,
            owners,
            actor_epoch,
            spec,
            lent: Vec::new(),
        })
    }

    /// The peer that owns `id`, as far as this node knows: this node for an object a local
    /// process made, the peer it came from for a ref of another peer, the peer a result is
    /// owed to for a task run here for a peer.
    fn owner_of(&self, id: &ObjectId) -> Option<PeerKey> {
        let e = self.objects.get(id)?;
        if e.owner.is_some() {
            return self.me;
        }
        e.owner_peer.or(match e.push_to {
            Some(Party::Peer(p)) => Some(p),
            _ => None,
        })
    }

    // ---- running tasks for peers ----

    fn refuse(&mut self, from: PeerKey, task: TaskId, reason: String) {
        tracing::debug!(task = %task, peer = %from, %reason, "refusing a task");
        self.tell_peer(from, PeerMsg::Refuse { task, reason });
    }

    fn remote_submit(&mut self, now: Instant, from: PeerKey, rt: Box<RemoteTask>) {
        if self.me.is_none() {
            return;
        }
        let task = rt.spec.task_id;
        // A task reads its arguments: those held here only if its sender may read them.
        let forbidden = rt.spec.args.iter().filter_map(|a| match a {
            Arg::Ref(id) => Some(id),
            Arg::Value(_) => None,
        });
        let forbidden = forbidden
            .chain(rt.spec.nested.iter())
            .find(|id| self.objects.contains(id) && !self.objects.may_read(id, from))
            .copied();
        if let Some(id) = forbidden {
            self.rights.refuse(now, from, Refused::Task, id);
            if let TaskKind::ActorMethod { .. } = rt.spec.kind {
                let value = RemoteValue::Error(TaskError::NotAllowed { id });
                let ret = rt.spec.return_id();
                self.tell_peer(from, PeerMsg::object(ret, value));
            } else {
                self.refuse(from, task, format!("it may not read argument {id} here"));
            }
            return;
        }
        if let TaskKind::ActorMethod { actor, .. } = rt.spec.kind {
            // Its actor may be waiting for its binary: the call waits behind it.
            let creating = self.spill.awaiting_binary.iter().find_map(|(b, w)| {
                w.iter()
                    .any(|(_, t)| matches!(&t.spec.kind, TaskKind::CreateActor(c) if c.actor_id == actor))
                    .then_some(*b)
            });
            if let Some(binary) = creating {
                self.stash_for_binary(binary, from, rt);
                return;
            }
            // Known here: hosted, placed by this node, or moved on (its calls follow).
            let known = self.actors.get(&actor).is_some()
                || self.directory.placement(&actor).is_some()
                || self.directory.home(&actor).is_some_and(|home| home != from);
            if !known {
                let id = rt.spec.return_id();
                let msg = PeerMsg::object(id, RemoteValue::Error(TaskError::NoSuchActor { actor }));
                self.tell_peer(from, msg);
                return;
            }
            self.admit_remote(now, from, rt);
            return;
        }
        if rt.target != self.spill.target {
            let reason = format!("this peer runs {}, not {}", self.spill.target, rt.target);
            return self.refuse(from, task, reason);
        }
        if let Some(reason) = self.ruled_out_here(&rt.spec) {
            return self.refuse(from, task, reason);
        }
        let demand = &rt.spec.resources;
        if !self.sched.total().contains(demand) {
            let reason = format!("this peer has {}", self.sched.total());
            return self.refuse(from, task, reason);
        }
        // A peer's actor only where it fits now: queued here behind actors that may hold
        // their resources for good, it would wait while other peers have room.
        if matches!(rt.spec.kind, TaskKind::CreateActor(_))
            && !self.tasks.contains_key(&task)
            && !(self.sched.free().contains(demand) && self.sched.actors_queued() == 0)
        {
            return self.refuse(from, task, "no room now for an actor".into());
        }
        // Room now, or a place in the queue (as many tasks as this node has CPUs).
        let depth = (self.sched.total().get_milli(CPU) / 1000) as usize;
        let fits_now = self.sched.free().contains(demand) && self.sched.queued() == 0;
        if !fits_now && self.sched.queued() >= depth {
            return self.refuse(from, task, "no room now".into());
        }
        let binary = rt.spec.binary;
        if self.binaries.contains_key(&binary) {
            self.admit_remote(now, from, rt);
            return;
        }
        if !self.spill.accepts_code {
            return self.refuse(from, task, "this peer does not take shipped code".into());
        }
        if self.stash_for_binary(binary, from, rt) > 1 {
            return;
        }
        tracing::info!(%binary, peer = %from, "fetching a binary to run a peer's task");
        self.out
            .push_back(Output::Job(Job::FetchBinary { from, binary }));
    }

    /// Keeps peer `from`'s task until `binary` is here; the refs it carries stay while it
    /// waits (its `lent` lists those pinned). Says how many tasks wait for `binary` now.
    fn stash_for_binary(
        &mut self,
        binary: BinaryId,
        from: PeerKey,
        mut rt: Box<RemoteTask>,
    ) -> usize {
        rt.lent = rt
            .spec
            .nested
            .iter()
            .copied()
            .filter(|id| self.objects.pin(id))
            .collect();
        let waiting = self.spill.awaiting_binary.entry(binary).or_default();
        waiting.push((from, rt));
        waiting.len()
    }

    fn binary_fetched(
        &mut self,
        now: Instant,
        binary: BinaryId,
        result: Result<PathBuf, FetchFailure>,
    ) {
        let mut waiting = self
            .spill
            .awaiting_binary
            .remove(&binary)
            .unwrap_or_default();
        let pinned: Vec<ObjectId> = waiting
            .iter_mut()
            .flat_map(|(_, rt)| std::mem::take(&mut rt.lent))
            .collect();
        self.binary_fetched_for(now, binary, result, waiting);
        self.unpin_stashed(pinned);
    }

    /// The refs pinned for peers' tasks that waited for their binary: let go.
    fn unpin_stashed(&mut self, ids: Vec<ObjectId>) {
        for id in &ids {
            self.objects.unpin(id);
        }
        for id in ids {
            self.maybe_free(id);
        }
    }

    fn binary_fetched_for(
        &mut self,
        now: Instant,
        binary: BinaryId,
        result: Result<PathBuf, FetchFailure>,
        waiting: Vec<(PeerKey, Box<RemoteTask>)>,
    ) {
        match result {
            Ok(path) => {
                tracing::info!(%binary, path = %path.display(), "binary fetched");
                if let std::collections::hash_map::Entry::Vacant(e) = self.binaries.entry(binary) {
                    e.insert(path);
                    // Code from a peer: its workers run sandboxed.
                    self.shipped.insert(binary);
                    // Its workers are kept while the node runs (the cache is bounded).
                    self.sched.binary_attached(binary);
                }
                for (from, rt) in waiting {
                    self.admit_remote(now, from, rt);
                }
            }
            Err(FetchFailure::Rejected(reason)) => {
                // (The network logged it, once per binary.)
                for (from, rt) in waiting {
                    let task = rt.spec.task_id;
                    tracing::debug!(task = %task, peer = %from, %reason, "refusing a task: its code is rejected");
                    let reason = reason.clone();
                    self.tell_peer(from, PeerMsg::CodeRejected { task, reason });
                }
            }
            Err(FetchFailure::Failed(reason)) => {
                tracing::warn!(%binary, %reason, "binary fetch failed");
                for (from, rt) in waiting {
                    let reason = format!("cannot fetch the binary: {reason}");
                    self.refuse(from, rt.spec.task_id, reason);
                }
            }
        }
    }

    /// Takes a peer's task in: its arguments are fetched from where they are, then it runs
    /// here as if a local process submitted it.
    fn admit_remote(&mut self, now: Instant, from: PeerKey, rt: Box<RemoteTask>) {
        let RemoteTask {
            spec,
            hops,
            locations,
            owners,
            actor_epoch,
            ..
        } = *rt;
        let task = spec.task_id;
        if let TaskKind::CreateActor(c) = &spec.kind {
            // Placed here again (its creator lost this node for a while, and chose it
            // anew): the copy here, if it lives on, is that placement.
            self.actors.raise_epoch(c.actor_id, actor_epoch);
        }
        if let TaskKind::ActorMethod { actor, token } = &spec.kind {
            // Only a caller with the actor's handle learns of a move, or ends this copy
            // (one without is refused as any other call of its).
            if self.actors.check_token(*actor, token).is_ok()
                && self.superseded_copy(now, from, *actor, actor_epoch, spec.return_id())
            {
                return;
            }
        }
        if self.tasks.contains_key(&task) && self.spill.spilled_to(&task) == Some(from) {
            // Back where it was sent from (its actor moved here since): it runs from here.
            tracing::debug!(task = %task, peer = %from, "a task sent to a peer came back");
            self.spill.unspill(&task);
            self.spill.forget(&task);
            self.run_again_here(now, task);
            return;
        }
        if self.tasks.contains_key(&task) {
            // Sent again (its owner lost this node for a while and placed it here again):
            // the copy under way here serves, and its result goes to the owner again.
            tracing::debug!(task = %task, "a task submitted again; its result goes to its owner");
            let party = Party::Peer(from);
            if let TaskKind::CreateActor(c) = &spec.kind {
                let ret = spec.return_id();
                let known = self.objects.get(&ret).map(|e| e.value.clone());
                if let Some(Some(value)) = known {
                    // The actor's id went out already (its entry lives on for a process
                    // here that holds a handle): it goes out again; nothing is kept for the
                    // peer (the value is inline).
                    self.send(party, ToClient::Object { id: ret, value });
                    return;
                }
                if known.is_none() {
                    // The actor's id went out already (and was let go): it goes out again.
                    match shoal_protocol::codec::encode(&(c.actor_id, c.token)) {
                        Ok(bytes) => {
                            let value = ObjectValue::Inline(bytes);
                            self.send(party, ToClient::Object { id: ret, value });
                        }
                        Err(e) => tracing::error!(error = %e, "cannot encode an actor id"),
                    }
                    return;
                }
            }
            let ret = spec.return_id();
            let more = self
                .tasks
                .get(&task)
                .map(|e| e.more.clone())
                .unwrap_or_default();
            for id in std::iter::once(ret).chain(more.iter().copied()) {
                let e = self.objects.entry(id);
                if !e.holders.contains(&party) {
                    e.holders.push(party);
                }
                e.push_to.get_or_insert(party);
            }
            if !more.is_empty() && self.objects.get(&ret).is_some_and(|e| e.value.is_none()) {
                self.more_returns.insert(ret, more);
            }
            if spec.stream.is_some() {
                self.stream_sent_again(from, task, None);
            }
            return;
        }
        let ret = spec.return_id();
        let ran = self.objects.get(&ret).and_then(|e| e.value.as_ref());
        if ran.is_some_and(|v| !matches!(v, ObjectValue::Error(_))) {
            // It ran here already (its owner lost this node meanwhile and sent it again):
            // its results stand, and go to the owner again (its other returns first; one
            // no longer here is lost to the owner).
            tracing::debug!(task = %task, peer = %from, "a task sent again after it ran here; its result goes again");
            let party = Party::Peer(from);
            if spec.stream.is_some() {
                // Its items first, those the owner did not say it has.
                let count = match ran {
                    Some(ObjectValue::Inline(bytes)) => {
                        shoal_protocol::codec::decode::<u64>(bytes, 8).ok()
                    }
                    _ => None,
                };
                let count = count.and_then(|n| u32::try_from(n).ok());
                self.stream_sent_again(from, task, Some(count.unwrap_or(0)));
            }
            let more = if spec.num_returns > 1 {
                spec.more_return_ids()
            } else {
                Vec::new()
            };
            for id in more.into_iter().chain(std::iter::once(ret)) {
                let Some(value) = self.objects.get(&id).and_then(|e| e.value.clone()) else {
                    continue;
                };
                // A large value stays here for the peer until it says `Release`; a small
                // one it keeps itself (as when it went the first time).
                let e = self.objects.entry(id);
                if matches!(value, ObjectValue::Shared(_)) && !e.holders.contains(&party) {
                    e.holders.push(party);
                }
                self.send(party, ToClient::Object { id, value });
            }
            return;
        }
        if ran.is_some() {
            // It failed here before, and its owner retries it: the failure it was told
            // makes way for this run's outcome (a lend of its result kept the entry here).
            tracing::debug!(task = %task, peer = %from, "a task that failed here is sent again; it runs again");
            let more = spec.more_return_ids();
            for id in std::iter::once(ret).chain(more) {
                if let Some(e) = self.objects.get_mut(&id) {
                    if matches!(e.value, Some(ObjectValue::Error(_))) {
                        e.value = None;
                    }
                }
            }
        }
        let arg_ids: Vec<ObjectId> = spec
            .args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref(id) => Some(*id),
                Arg::Value(_) => None,
            })
            .collect();
        for (id, holders) in &locations {
            let e = self.objects.entry(*id);
            if e.value.is_some() {
                continue;
            }
            let r = e.remote.get_or_insert_with(Default::default);
            for p in peers_from(holders) {
                if !r.holders.contains(&p) {
                    r.holders.push(p);
                }
            }
        }
        // Owners of refs the task carries (no other: a peer names owners of what it sends,
        // nothing else), where this node knows of none yet.
        for (id, owner) in &owners {
            if !locations.iter().any(|(l, _)| l == id) {
                continue;
            }
            let Some(owner) = PeerKey::from_bytes(owner).filter(|o| Some(*o) != self.me) else {
                continue;
            };
            if let Some(e) = self.objects.get_mut(id) {
                if e.owner.is_none() && e.owner_peer.is_none() {
                    e.owner_peer = Some(owner);
                }
            }
        }
        tracing::debug!(task = %task, function = spec.function, peer = %from, "running a task for a peer");
        self.metrics.tasks_received += 1;
        let created = match &spec.kind {
            TaskKind::CreateActor(c) => Some(c.actor_id),
            _ => None,
        };
        self.submit(now, Party::Peer(from), spec, hops);
        if let Some(actor) = created {
            // Its incarnation here is the placement its creator made.
            self.actors.raise_epoch(actor, actor_epoch);
        }
        for id in arg_ids {
            self.start_fetch(id);
        }
        // Nested refs are fetched when someone reads them; objects nobody pinned go.
        for (id, _) in locations {
            self.maybe_free(id);
        }
    }

    /// A task of this node that a peer gave back: placed again, or queued at its actor.
    fn run_again_here(&mut self, now: Instant, task: TaskId) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let (kind, owner, missing) = (entry.spec.kind.clone(), entry.spec.owner, entry.missing);
        match kind {
            TaskKind::ActorMethod { actor, .. } if !self.actor_is_remote(&actor) => {
                if let Err(e) = self.actors.enqueue(actor, owner, task) {
                    self.fail_task(now, task, e);
                } else if missing == 0 {
                    self.deps_ready(now, task);
                }
            }
            TaskKind::ActorMethod { actor, .. } => self.forward_call(now, task, actor),
            _ => self.place_task(now, task),
        }
    }

    // ---- actors elsewhere ----

    /// A peer's call of `actor` that knows of a newer incarnation (`epoch`) than the copy
    /// hosted here: its creator placed it again while this node was out of its reach. The
    /// call is answered [`TaskError::ActorMoved`] (it does not run) and the copy ends, so
    /// that the two never both take calls that know of the newer one. Says whether it was.
    fn superseded_copy(
        &mut self,
        now: Instant,
        from: PeerKey,
        actor: ActorId,
        epoch: u32,
        ret: ObjectId,
    ) -> bool {
        let Some(a) = self.actors.get(&actor) else {
            return false;
        };
        if epoch <= a.epoch {
            return false;
        }
        let mine = a.epoch;
        let home = self.directory.home(&actor).map(|p| p.to_string());
        tracing::warn!(actor = %actor, peer = %from, mine, newer = epoch, "a call knows of a newer incarnation of an actor hosted here; ending this copy");
        let dead = a.is_dead();
        let moved = TaskError::ActorMoved {
            actor,
            epoch,
            peer: home,
        };
        if !dead {
            self.kill_actor(now, actor, moved.clone());
        }
        // Nothing is kept of the copy: calls made here from now on look the actor up, and
        // go to where it is.
        self.actors.forget_if_dead(actor);
        let value = ObjectValue::Error(moved);
        self.send(Party::Peer(from), ToClient::Object { id: ret, value });
        true
    }

    /// Call `task` of `actor`, sent to `peer`, came back [`TaskError::ActorMoved`]: a newer
    /// incarnation serves the actor. The call never ran, so it goes to where the actor is
    /// now (looked up again), once per newer epoch learnt. Says whether it did; if not, the
    /// error stands.
    fn follow_move(
        &mut self,
        now: Instant,
        peer: PeerKey,
        task: TaskId,
        actor: ActorId,
        epoch: u32,
    ) -> bool {
        if !self.directory.learn_epoch(actor, epoch) {
            // Nothing newer learnt (or this node placed it, and knows best): following the
            // move again would loop.
            return false;
        }
        tracing::info!(task = %task, actor = %actor, %peer, epoch, "a call reached a superseded copy of its actor; following it");
        self.spill.unspill(&task);
        self.spill.forget(&task);
        if self.directory.home(&actor) == Some(peer) {
            self.directory.clear_home(&actor);
        }
        self.forward_call(now, task, actor);
        true
    }

    /// Creates an actor on `peer`: its calls queued here follow, in order.
    fn spill_actor(&mut self, now: Instant, peer: PeerKey, task: TaskId, actor: ActorId) {
        let Some(mut rt) = self.remote_task(task) else {
            return;
        };
        let epoch = self.directory.next_epoch(&actor);
        rt.actor_epoch = epoch;
        let (demand, ret) = (rt.spec.resources.clone(), rt.spec.return_id());
        tracing::info!(actor = %actor, class = rt.spec.function, %peer, epoch, "actor placed on a peer");
        self.tell_peer(peer, PeerMsg::Submit(Box::new(rt)));
        if let Some(l) = self.spill.peers.get_mut(&peer) {
            l.sent.push(demand);
        }
        self.directory.placed(actor, peer, task, ret, epoch);
        // Its records here are withdrawn; the peer announces its own. Calls wait here, in
        // order, until the peer confirms it took the actor in.
        self.withdraw_actor(actor);
        let queued = self.actors.forget(actor);
        for t in queued {
            self.forward_call(now, t, actor);
        }
    }

    /// The actor that `task` placed on `peer`, if that is where this node placed it.
    fn placed_on(&self, task: TaskId, peer: PeerKey) -> Option<ActorId> {
        let TaskKind::CreateActor(c) = &self.tasks.get(&task)?.spec.kind else {
            return None;
        };
        let placed = self.directory.placement(&c.actor_id)?;
        (placed.task == task && placed.peer == peer).then_some(c.actor_id)
    }

    /// `peer` answered the creation of `actor` placed there: the actor's id (it took the
    /// actor in: the calls that waited go), or an error (it could not create it, or the
    /// actor ended there for good: it is placed nowhere, and the calls that wait fail).
    fn placement_answered(
        &mut self,
        now: Instant,
        peer: PeerKey,
        actor: ActorId,
        value: &RemoteValue,
    ) {
        if let RemoteValue::Error(err) = value {
            tracing::info!(actor = %actor, %peer, error = %err, "an actor placed on a peer ended there");
            if let Some(placed) = self.directory.unplace(&actor) {
                self.directory.clear_home(&actor);
                self.directory.end(actor, err.clone());
                self.finish_task(now, placed.task);
            }
            self.fail_pending_calls(now, actor, err.clone());
            return;
        }
        for t in self.directory.confirm(actor) {
            self.send_call(now, peer, t);
        }
    }

    /// Calls waiting here for `actor`'s placement fail with `err`.
    fn fail_pending_calls(&mut self, now: Instant, actor: ActorId, err: TaskError) {
        for t in self.directory.take_pending(&actor) {
            self.fail_task(now, t, err.clone());
        }
    }

    /// The creation of `actor` and the calls behind it, waiting here for their binary, end:
    /// the calls' senders learn that the actor was killed.
    /// The secret of the handles of a peer's actor whose creation waits here for its
    /// binary.
    fn awaiting_actor_token(&self, actor: &ActorId) -> Option<ActorToken> {
        self.spill
            .awaiting_binary
            .values()
            .flatten()
            .find_map(|(_, rt)| match &rt.spec.kind {
                TaskKind::CreateActor(c) if c.actor_id == *actor => Some(c.token),
                _ => None,
            })
    }

    fn drop_awaiting_actor(&mut self, actor: ActorId, reason: &str) {
        let taken = self.spill.take_awaiting(|_, rt| match &rt.spec.kind {
            TaskKind::CreateActor(c) => c.actor_id == actor,
            TaskKind::ActorMethod { actor: a, .. } => *a == actor,
            TaskKind::Function => false,
        });
        let pinned = taken.iter().flat_map(|(_, rt)| rt.lent.clone()).collect();
        self.unpin_stashed(pinned);
        for (from, rt) in taken {
            if let TaskKind::ActorMethod { .. } = rt.spec.kind {
                let error = TaskError::ActorKilled {
                    actor,
                    reason: reason.to_string(),
                };
                let id = rt.spec.return_id();
                let value = RemoteValue::Error(error);
                self.tell_peer(from, PeerMsg::object(id, value));
            }
        }
    }

    /// Gives a peer's actor that waited here for resources back to `owner`, the node that
    /// placed it: the calls that came here follow it through that node (its own calls go
    /// back to it).
    fn give_back_actor(&mut self, now: Instant, task: TaskId, actor: ActorId, owner: PeerKey) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let (ret, span) = (entry.ret, entry.span.clone());
        let _entered = span.enter();
        tracing::debug!(actor = %actor, %owner, "a peer's actor waited here while others had room; giving it back");
        self.sched.end_actor(now, task);
        self.withdraw_actor(actor);
        let calls = self.actors.forget(actor);
        let reason = "it waited here while other peers had room".to_string();
        self.tell_peer(owner, PeerMsg::Refuse { task, reason });
        self.directory.set_home(actor, owner);
        for t in calls {
            self.forward_call(now, t, actor);
        }
        self.finish_task(now, task);
        self.objects.release(Party::Peer(owner), &ret);
        self.maybe_free(ret);
    }

    /// Asks the peer hosting `actor` to end it, with the secret of its handles. Returns
    /// `false` if no peer is known to.
    pub(super) fn kill_remote(
        &mut self,
        now: Instant,
        actor: ActorId,
        no_restart: bool,
        reason: &str,
        token: ActorToken,
    ) -> bool {
        self.end_remote(now, actor, no_restart, false, reason, token)
    }

    /// Every counted handle of `actor`, placed at a peer, is gone: that peer ends it once
    /// its calls are done (unless it gave out a handle that is not counted). Says whether
    /// the actor is one this node placed.
    pub(super) fn drain_remote(&mut self, now: Instant, actor: ActorId) -> bool {
        if self.directory.placement(&actor).is_none() {
            return false;
        }
        let token = self.actor_token(&actor).unwrap_or_default();
        let reason = "all its handles were dropped";
        self.end_remote(now, actor, true, true, reason, token)
    }

    fn end_remote(
        &mut self,
        now: Instant,
        actor: ActorId,
        no_restart: bool,
        drain: bool,
        reason: &str,
        token: ActorToken,
    ) -> bool {
        let placed = self.directory.placement(&actor).map(|p| p.peer);
        let Some(peer) = placed.or_else(|| self.directory.home(&actor)) else {
            return false;
        };
        let msg = PeerMsg::Kill {
            actor,
            no_restart,
            drain,
            reason: reason.to_string(),
            token,
            moved_to: None,
        };
        self.tell_peer(peer, msg);
        if no_restart {
            if let Some(placed) = self.directory.unplace(&actor) {
                self.directory.clear_home(&actor);
                self.finish_task(now, placed.task);
                let err = TaskError::ActorKilled {
                    actor,
                    reason: reason.to_string(),
                };
                self.fail_pending_calls(now, actor, err);
            }
        }
        true
    }

    /// A party left: the actors it created on peers end too (unless detached).
    pub(super) fn end_remote_actors_of(&mut self, now: Instant, party: Party) {
        let mine: Vec<(ActorId, bool)> = self
            .directory
            .placements()
            .into_iter()
            .filter_map(|(actor, placed)| {
                let e = self.tasks.get(&placed.task)?;
                let TaskKind::CreateActor(c) = &e.spec.kind else {
                    return None;
                };
                (e.owner == party).then_some((actor, c.detached))
            })
            .collect();
        for (actor, detached) in mine {
            if detached {
                if let Some(placed) = self.directory.unplace(&actor) {
                    self.finish_task(now, placed.task);
                }
            } else {
                let token = self.actor_token(&actor).unwrap_or_default();
                self.kill_remote(now, actor, true, "its creator exited", token);
            }
        }
    }

    /// Whether calls to `actor` go to a peer.
    pub(super) fn actor_is_remote(&self, actor: &ActorId) -> bool {
        self.me.is_some() && self.actors.get(actor).is_none()
    }

    /// Sends a call of an actor hosted elsewhere to its peer, in order with the caller's
    /// other calls (its arguments are fetched from here by that peer).
    pub(super) fn forward_call(&mut self, now: Instant, task: TaskId, actor: ActorId) {
        match self.directory.route(actor, task) {
            Route::To(peer) => self.send_call(now, peer, task),
            Route::Queued => {}
            Route::Locate => self.out.push_back(Output::Job(Job::LocateActor { actor })),
            Route::Ended(err) => self.fail_task(now, task, err),
        }
    }

    fn send_call(&mut self, now: Instant, peer: PeerKey, task: TaskId) {
        if self.tasks.get(&task).map(|e| e.owner) == Some(Party::Peer(peer)) {
            // A peer's call whose actor now lives at that peer: given back, it runs there.
            let ret = self.tasks.get(&task).map(|e| e.ret);
            let reason = ACTOR_HERE.to_string();
            self.tell_peer(peer, PeerMsg::Refuse { task, reason });
            self.finish_task(now, task);
            if let Some(ret) = ret {
                self.objects.release(Party::Peer(peer), &ret);
                self.maybe_free(ret);
            }
            return;
        }
        let Some(mut rt) = self.remote_task(task) else {
            return;
        };
        rt.hops = MAX_HOPS;
        let Some((ret, more)) = self.tasks.get(&task).map(|e| (e.ret, e.more.clone())) else {
            return;
        };
        self.tell_peer(peer, PeerMsg::Submit(Box::new(rt)));
        // Its other returns too, if its method has several, are made there.
        self.spill.spilled(task, ret, &more, peer, None);
        self.stream_sent(task);
    }

    fn actor_located(&mut self, now: Instant, actor: ActorId, found: Option<(PeerKey, u32)>) {
        if let Some((_, epoch)) = found {
            self.directory.learn_epoch(actor, epoch);
        }
        let found = found.map(|(peer, _)| peer);
        let calls = self.directory.located(actor, found);
        match found {
            Some(peer) => {
                tracing::debug!(actor = %actor, %peer, "actor located");
                for t in calls {
                    self.send_call(now, peer, t);
                }
            }
            None => {
                for t in calls {
                    self.fail_task(now, t, TaskError::NoSuchActor { actor });
                }
            }
        }
    }

    /// The directory answered the check of a name (question `n`): if it names another
    /// actor, at a peer in view, that peer says whether the actor lives; else the name is
    /// free.
    fn claim_resolved(
        &mut self,
        now: Instant,
        n: u64,
        name: String,
        found: Option<(ActorId, PeerKey)>,
    ) {
        let task = match self.name_lookups.get(&n) {
            Some(l) if Some(l.peer) == self.me => match l.asked {
                Asked::Claim { task } => task,
                _ => return,
            },
            // Given up already (it took too long).
            _ => return,
        };
        let mine = self.claiming(task);
        match found {
            Some((actor, peer))
                if Some(actor) != mine && Some(peer) != self.me && self.spill.in_view(&peer) =>
            {
                if let Some(l) = self.name_lookups.get_mut(&n) {
                    l.peer = peer;
                }
                self.tell_peer(peer, PeerMsg::LookupActor { request: n, name });
            }
            _ => {
                self.name_lookups.remove(&n);
                self.claim_free(now, task);
            }
        }
    }

    /// `peer` answered the check of the name of the actor `task` creates here.
    fn claim_answered(
        &mut self,
        now: Instant,
        task: TaskId,
        actor: Option<ActorInfo>,
        held: Option<ObjectId>,
        counted_at: Option<PeerKey>,
    ) {
        match actor {
            Some(found) if Some(found.actor_id) != self.claiming(task) => {
                self.claim_taken(now, task, found, held, counted_at)
            }
            _ => self.claim_free(now, task),
        }
    }

    /// Looks a name up in the mesh for a local `LookupActor` that found nothing here.
    pub(super) fn lookup_remote(&mut self, conn: ConnId, request: u64, name: &str) -> bool {
        if self.me.is_none() {
            return false;
        }
        self.out.push_back(Output::Job(Job::ResolveName {
            asker: NameAsker::Proc { conn, request },
            name: name.to_string(),
        }));
        true
    }

    // ---- failures ----

    /// A lost peer may be alive and still count on this node (a loss is declared on each
    /// side on its own, and a late one can follow messages of a new connection): its tasks
    /// dropped here go back to it (they never ran), and those running here fail with a
    /// typed error. Sent to a peer that is gone, these are lost with it, harmlessly.
    /// Tells a peer this node declared lost (it may be alive: cut off, or frozen) what
    /// became of its tasks here: `dropped` ones (not started) go back to it, and those that
    /// ran (`stopped` here, or still running) end with `PeerLost`, so that it runs them again
    /// itself if the message reaches it.
    pub(super) fn tell_lost_peer(
        &mut self,
        peer: PeerKey,
        mut dropped: Vec<TaskId>,
        stopped: Vec<ObjectId>,
    ) {
        dropped.sort();
        for task in dropped {
            let reason = LOST_YOU.to_string();
            self.tell_peer(peer, PeerMsg::Refuse { task, reason });
        }
        let Some(me) = self.me else {
            return;
        };
        let party = Party::Peer(peer);
        let mut running: Vec<ObjectId> = self
            .tasks
            .iter()
            .filter(|(_, e)| e.owner == party && !matches!(e.spec.kind, TaskKind::CreateActor(_)))
            .map(|(_, e)| e.ret)
            .chain(stopped)
            .collect();
        running.sort();
        for id in running {
            let error = TaskError::PeerLost {
                peer: me.to_string(),
            };
            let value = RemoteValue::Error(error);
            self.tell_peer(peer, PeerMsg::object(id, value));
        }
    }

    /// Name lookups that `which` picks end with nothing found.
    pub(super) fn end_lookups(&mut self, now: Instant, which: impl Fn(&super::NameLookup) -> bool) {
        let mut ended: Vec<u64> = self
            .name_lookups
            .iter()
            .filter(|(_, l)| which(l))
            .map(|(n, _)| *n)
            .collect();
        ended.sort();
        for n in ended {
            let Some(l) = self.name_lookups.remove(&n) else {
                continue;
            };
            tracing::debug!(peer = %l.peer, asked = ?l.asked, "a question about a named actor ends unanswered");
            match l.asked {
                Asked::Name { conn, request } | Asked::Handle { conn, request, .. } => {
                    self.found_for(conn, request, None, None)
                }
                // Its handle cannot be counted: it lives until it is killed.
                Asked::Nest { actor, .. } => self.actors.escape(actor),
                Asked::Claim { task } => {
                    tracing::info!(task = %task, "the mesh did not say in time whether an actor's name is taken elsewhere; it is taken here");
                    self.claim_free(now, task);
                }
            }
        }
    }

    /// Tells process `conn` what its lookup by name (its `request`) found: the actor, and
    /// the handle object it now holds (lent here, or here), if its handles are counted.
    fn found_for(
        &mut self,
        conn: ConnId,
        request: u64,
        actor: Option<ActorInfo>,
        held: Option<ObjectId>,
    ) {
        // The asker holds the handle object (counted with the rest) if it is still here.
        let live = self.procs.contains_key(&conn);
        let held = held.filter(|_| actor.is_some() && live);
        if let Some(h) = held {
            self.objects.hold(Party::Proc(conn), &[h]);
        }
        let msg = ToClient::ActorFound {
            request,
            actor,
            held,
        };
        self.tell_proc(conn, msg);
    }

    /// Process `conn`'s lookup by name found `actor`, whose handles `at` counts: asks it to
    /// lend one (or takes one here, if that is this node). The process is told the actor
    /// with the handle object it then holds, or nothing if that last handle went meanwhile.
    pub(super) fn ask_lend(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: u64,
        actor: ActorInfo,
        at: PeerKey,
    ) {
        if Some(at) == self.me {
            let held = match self.handles_counted(actor.actor_id) {
                Counted::Here(h) => Some(h),
                _ => None,
            };
            return self.found_for(conn, request, held.map(|_| actor), held);
        }
        let (id, token) = (actor.actor_id, actor.token);
        let asked = Asked::Handle {
            conn,
            request,
            actor,
        };
        self.ask_handle(now, at, id, token, asked);
    }

    /// A get-or-create here found `actor` (hosted here), whose handles `at` counts: its
    /// return object `ret` holds a handle object lent from there, as soon as it comes.
    pub(super) fn ask_lend_to_nest(
        &mut self,
        now: Instant,
        ret: ObjectId,
        actor: ActorId,
        at: PeerKey,
    ) {
        let Some(token) = self.actor_token(&actor) else {
            return self.actors.escape(actor);
        };
        self.ask_handle(now, at, actor, token, Asked::Nest { ret, actor });
    }

    pub(super) fn ask_handle(
        &mut self,
        now: Instant,
        at: PeerKey,
        actor: ActorId,
        token: ActorToken,
        asked: Asked,
    ) {
        let request = self.next_lookup;
        self.next_lookup += 1;
        let lookup = super::NameLookup {
            asked,
            peer: at,
            deadline: now + super::NAME_LOOKUP_TIMEOUT,
        };
        self.name_lookups.insert(request, lookup);
        let msg = PeerMsg::LendHandle {
            request,
            actor,
            token,
        };
        self.tell_peer(at, msg);
    }

    /// `peer`, lost, is seen again (a partition healed, or it restarted): copies of actors
    /// this node placed there and then placed again elsewhere (or gave up) end, so that
    /// only one incarnation of each serves calls.
    pub(super) fn peer_back(&mut self, peer: PeerKey) {
        for (actor, token) in self.directory.take_superseded(peer) {
            tracing::info!(actor = %actor, %peer, "ending an actor's copy at a peer seen again: it was placed again meanwhile");
            let moved_to = self
                .directory
                .placement(&actor)
                .filter(|p| p.peer != peer)
                .map(|p| p.peer.to_vec());
            let kill = PeerMsg::Kill {
                actor,
                no_restart: true,
                drain: false,
                reason: SUPERSEDED.to_string(),
                token,
                moved_to,
            };
            self.tell_peer(peer, kill);
        }
    }

    pub(super) fn peer_lost(&mut self, now: Instant, peer: PeerKey) {
        if self.me.is_none() || Some(peer) == self.me {
            return;
        }
        // Loss is mutual: the peer must not keep waiting for this node either.
        self.out.push_back(Output::Disconnect { peer });
        self.state_peer_lost(now, peer);
        for request in self.rights.drain(Some(peer)) {
            self.refuse_waiting(request);
        }
        self.end_lookups(now, |l| l.peer == peer);
        self.metrics.peers_lost += 1;
        self.spill.write_off(peer);
        let lost = self.spill.take_spilled_to(peer);
        self.directory.peer_lost(peer);
        if !lost.is_empty() {
            tracing::warn!(%peer, tasks = lost.len(), "peer lost with tasks of this node; retrying them");
        }
        let error = TaskError::PeerLost {
            peer: peer.to_string(),
        };
        for t in lost {
            let Some(entry) = self.tasks.get_mut(&t) else {
                continue;
            };
            if entry.is_call() {
                self.fail_task(now, t, error.clone());
                continue;
            }
            if entry.retries_left > 0 {
                entry.retries_left -= 1;
                self.metrics.tasks_retried += 1;
                tracing::info!(task = %t, retries_left = entry.retries_left, "retrying a task lost with its peer");
                self.requeue(now, t);
            } else {
                self.fail_task(now, t, error.clone());
            }
        }
        // Objects only that peer held are gone; fetches from it are tried elsewhere.
        let mut ids: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(_, e)| {
                e.value.is_none() && e.remote.as_ref().is_some_and(|r| r.holders.contains(&peer))
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        for id in ids {
            let Some(e) = self.objects.get_mut(&id) else {
                continue;
            };
            let pending = !e.waiters.is_empty() || !e.dependents.is_empty();
            let Some(r) = e.remote.as_mut() else { continue };
            r.holders.retain(|p| *p != peer);
            r.release_to.retain(|p| *p != peer);
            let was_fetching = std::mem::replace(&mut r.fetching, false);
            if pending || was_fetching {
                self.start_fetch(id);
            }
        }
        // Actors this node placed there come back (elsewhere) if they have restarts left.
        for (actor, placed) in self.directory.placements() {
            if placed.peer != peer || placed.moving {
                continue;
            }
            // The peer may be alive and not know of the loss (it restarted, say): its copy
            // must not run on beside the new one. (If it is only out of reach, this is lost
            // with the link: it is said again when the peer is seen again.)
            let reason = SUPERSEDED.to_string();
            let token = self.actor_token(&actor).unwrap_or_default();
            let kill = PeerMsg::Kill {
                actor,
                no_restart: true,
                drain: false,
                reason,
                token,
                moved_to: None,
            };
            self.tell_peer(peer, kill);
            self.directory.supersede(actor, peer, token);
            let max = match self.tasks.get(&placed.task).map(|e| &e.spec.kind) {
                Some(TaskKind::CreateActor(c)) => c.max_restarts,
                _ => 0,
            };
            if !placed.confirmed || placed.restarts < max {
                tracing::warn!(actor = %actor, %peer, restarts = placed.restarts + 1, "actor lost with its peer; restarting it");
                self.directory.restarting(&actor);
                self.spill.refused(placed.task, peer, now);
                self.place_task(now, placed.task);
            } else {
                tracing::warn!(actor = %actor, %peer, "actor lost with its peer");
                self.directory.unplace(&actor);
                self.finish_task(now, placed.task);
                let err = TaskError::PeerLost {
                    peer: peer.to_string(),
                };
                self.fail_pending_calls(now, actor, err);
            }
        }
        // Actors that peer created here end with it, unless detached.
        let party = Party::Peer(peer);
        let mut created: Vec<ActorId> = self
            .tasks
            .values()
            .filter(|e| e.owner == party)
            .filter_map(|e| match &e.spec.kind {
                TaskKind::CreateActor(cr) if !cr.detached => Some(cr.actor_id),
                _ => None,
            })
            .collect();
        created.sort();
        for actor in created {
            self.kill_actor(
                now,
                actor,
                TaskError::ActorKilled {
                    actor,
                    reason: format!("its creator's peer {peer} left"),
                },
            );
            self.actors.forget_if_dead(actor);
        }
        // What it asked of this node ends as a departed process's would; what waits here
        // for its binary goes back to it.
        for (_, rt) in self.spill.take_awaiting(|from, _| from == peer) {
            let (reason, task) = (LOST_YOU.to_string(), rt.spec.task_id);
            self.tell_peer(peer, PeerMsg::Refuse { task, reason });
            self.unpin_stashed(rt.lent);
        }
        // It counts this node's borrows no more (it wrote them off with this node): nothing
        // is owed it.
        self.objects.lender_gone(peer);
        self.party_gone(now, party);
        self.spill_pass(now);
    }
}
