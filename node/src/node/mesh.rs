//! The core's side of the mesh: spilling tasks to peers with room, running tasks for
//! peers, moving objects between peers, routing actor calls, and recovering when a peer
//! dies.
//!
//! A peer this node works for is attached like a local process: it gets a connection
//! number of its own, so the tasks it submits, the objects it holds and the values it waits
//! for use the same bookkeeping as a driver's; what the core sends to that connection is
//! turned into [`PeerMsg`]s. Placement decisions come from the pure rules in
//! [`crate::sched::placement`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_protocol::mesh::{actor_key, name_key, ActorLocation, PeerMsg, RemoteTask, RemoteValue};
use shoal_protocol::{
    codec, ActorId, ActorInfo, Arg, BinaryId, ClientId, IdMap, ObjectId, ObjectValue, ResourceSet,
    Role, SharedObject, TaskError, TaskId, TaskKind, ToClient, CPU,
};
use tokio::sync::{mpsc, oneshot};

use super::{ConnId, Core, Event};
use crate::net::link::NetEvent;
use crate::net::NetHandle;
use crate::sched::placement::{self, Candidate, Demand, Infeasibility, Placement};

/// A spilled task is never sent on from the peer that accepted it.
pub(crate) const MAX_HOPS: u32 = 1;
/// A demand no peer can meet fails after this long (peers may still be joining).
const INFEASIBLE_GRACE: Duration = Duration::from_secs(5);
/// A peer that refused a task is not asked again for it for this long.
const REFUSAL_MEMORY: Duration = Duration::from_millis(500);
/// The store holder used for objects the node itself pulls from peers.
const PULL_HOLDER: u64 = u64::MAX;

/// Mesh-related events for the core.
#[derive(Debug)]
pub enum MeshEvent {
    /// From the network task.
    Net(NetEvent),
    /// A periodic look at waiting tasks.
    Tick,
    /// An object pull ended.
    Pulled {
        /// The object.
        id: ObjectId,
        /// Its size and digest.
        object: SharedObject,
        /// How it went.
        result: Result<(), String>,
    },
    /// A binary fetch ended.
    BinaryFetched {
        /// The binary.
        binary: BinaryId,
        /// Its executable, or why not.
        result: Result<PathBuf, String>,
    },
    /// A peer asks for an object's bytes.
    Serve {
        /// The object.
        id: ObjectId,
        /// Its file, pinned until the guard inside drops.
        reply: oneshot::Sender<Option<crate::net::objects::Served>>,
    },
    /// An object served to a peer may move again.
    Served {
        /// The object.
        id: ObjectId,
    },
    /// Holders of an object, from the DHT.
    ProvidersFound {
        /// The object.
        id: ObjectId,
        /// Peers announcing a copy.
        peers: Vec<PeerId>,
    },
    /// Where an actor lives, from the DHT.
    ActorLocated {
        /// The actor.
        actor: ActorId,
        /// Its peer and class.
        found: Option<(PeerId, String)>,
    },
    /// A name looked up in the DHT for a local `LookupActor`.
    NameResolved {
        /// Who asked.
        conn: ConnId,
        /// Its request number.
        request: u64,
        /// The actor and its peer.
        found: Option<(ActorInfo, PeerId)>,
    },
}

/// What a peer last reported, and what was sent to it since.
struct PeerLoad {
    report: shoal_protocol::mesh::LoadReport,
    /// Demands of tasks spilled to it since that report.
    sent: Vec<ResourceSet>,
    /// Demands of tasks whose results came back since that report (their resources are
    /// free again there, most likely).
    returned: Vec<ResourceSet>,
}

impl PeerLoad {
    /// What it has free now, as far as this node can tell.
    /// A peer also takes as many tasks as it has CPUs into its queue (so short tasks need
    /// not wait a report interval for each free slot): that room counts as free CPU.
    fn estimated_free(&self) -> ResourceSet {
        let mut free = self.report.free.clone();
        for d in &self.returned {
            free.add_capped(d, &self.report.total);
        }
        let slots = self.report.total.get_milli(CPU) / 1000 * 1000;
        let queue_room = slots.saturating_sub(self.report.queued.saturating_mul(1000));
        let cpu = free.get_milli(CPU) + queue_room;
        let mut free = free.with_milli(CPU, cpu);
        for d in &self.sent {
            free.subtract(d);
        }
        free
    }
}

/// Copies of an object held by peers.
#[derive(Debug, Default)]
pub(crate) struct RemoteCopy {
    /// Size and digest, once known (a large object).
    pub(crate) object: Option<SharedObject>,
    /// Peers that hold a copy (or can say where one is).
    pub(crate) holders: Vec<PeerId>,
    /// A fetch or pull is under way.
    pub(crate) fetching: bool,
    /// Peers that hold a copy for this node and must be told when it is no longer needed.
    pub(crate) release_to: Vec<PeerId>,
    /// Its value exists at a holder: tasks that take it are ready (where they run, they
    /// fetch it).
    pub(crate) ready: bool,
    /// Tasks about to run here that wait for a copy here.
    pub(crate) localizing: Vec<TaskId>,
    /// The DHT was asked for holders already.
    pub(crate) asked_dht: bool,
}

/// The mesh state of the core.
pub(crate) struct MeshState {
    pub(crate) net: NetHandle,
    me: PeerId,
    target: String,
    peers: HashMap<PeerId, PeerLoad>,
    conn_of: HashMap<PeerId, ConnId>,
    pub(crate) peer_of: HashMap<ConnId, PeerId>,
    /// Tasks of this node running at (or sent to) peers.
    spilled: IdMap<TaskId, (PeerId, ObjectId)>,
    /// Their return objects.
    spilled_ret: IdMap<ObjectId, TaskId>,
    refused: IdMap<TaskId, Vec<(PeerId, Instant)>>,
    /// Tasks only peers can run, waiting for one to have room (or to become infeasible).
    remote_wait: Vec<TaskId>,
    infeasible: Infeasibility,
    awaiting_binary: HashMap<BinaryId, Vec<(PeerId, Box<RemoteTask>)>>,
    /// Where actors hosted elsewhere live.
    actor_homes: IdMap<ActorId, PeerId>,
    /// Calls waiting for their actor's location, in order.
    actor_pending: IdMap<ActorId, Vec<TaskId>>,
    /// The last task that waited because no peer had room for it (not because none could
    /// ever run it).
    no_room: Option<TaskId>,
    /// Actors this node created on peers: where, by which task, restarts used.
    actor_spills: IdMap<ActorId, (PeerId, TaskId, u32)>,
}

impl MeshState {
    pub(crate) fn new(net: NetHandle) -> Self {
        Self {
            me: net.peer_id(),
            net,
            target: crate::net::target(),
            peers: HashMap::new(),
            conn_of: HashMap::new(),
            peer_of: HashMap::new(),
            spilled: Default::default(),
            spilled_ret: Default::default(),
            refused: Default::default(),
            remote_wait: Vec::new(),
            infeasible: Infeasibility::new(INFEASIBLE_GRACE),
            awaiting_binary: HashMap::new(),
            actor_homes: Default::default(),
            actor_pending: Default::default(),
            actor_spills: Default::default(),
            no_room: None,
        }
    }

    /// Peers with their estimated free resources, for placing a task.
    fn candidates(
        &self,
        binary: BinaryId,
        arg_bytes: &HashMap<PeerId, u64>,
    ) -> Vec<Candidate<PeerId>> {
        self.peers
            .iter()
            .map(|(peer, load)| Candidate {
                peer: *peer,
                free: load.estimated_free(),
                total: load.report.total.clone(),
                queued: load.report.queued,
                target: load.report.target.clone(),
                has_binary: load.report.binaries.contains(&binary),
                accepts_code: load.report.accepts_code,
                arg_bytes: arg_bytes.get(peer).copied().unwrap_or(0),
            })
            .collect()
    }

    fn spill(&mut self, task: TaskId, ret: ObjectId, peer: PeerId) {
        self.spilled.insert(task, (peer, ret));
        self.spilled_ret.insert(ret, task);
    }

    fn unspill(&mut self, task: &TaskId) {
        if let Some((_, ret)) = self.spilled.remove(task) {
            self.spilled_ret.remove(&ret);
        }
    }

    fn refused_by(&mut self, task: &TaskId, now: Instant) -> Vec<PeerId> {
        match self.refused.get_mut(task) {
            Some(v) => {
                v.retain(|(_, at)| now.saturating_duration_since(*at) < REFUSAL_MEMORY);
                v.iter().map(|(p, _)| *p).collect()
            }
            None => Vec::new(),
        }
    }
}

fn peer_bytes(p: &PeerId) -> Vec<u8> {
    p.to_bytes()
}

fn peers_from(bytes: &[Vec<u8>]) -> Vec<PeerId> {
    bytes
        .iter()
        .filter_map(|b| PeerId::from_bytes(b).ok())
        .collect()
}

/// Unpins a served object when the transfer ends.
struct ServeGuard {
    id: ObjectId,
    events: mpsc::Sender<Event>,
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        let (id, events) = (self.id, self.events.clone());
        if events
            .try_send(Event::Mesh(MeshEvent::Served { id }))
            .is_err()
        {
            tokio::spawn(async move {
                let _ = events.send(Event::Mesh(MeshEvent::Served { id })).await;
            });
        }
    }
}

/// The core's inbox, as the network delivers to it.
pub(crate) struct CoreSink {
    pub(crate) events: mpsc::Sender<Event>,
}

impl crate::net::link::NetSink for CoreSink {
    fn send(&self, ev: NetEvent) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move {
            self.events
                .send(Event::Mesh(MeshEvent::Net(ev)))
                .await
                .is_ok()
        })
    }

    fn try_send(&self, ev: NetEvent) -> bool {
        self.events
            .try_send(Event::Mesh(MeshEvent::Net(ev)))
            .is_ok()
    }
}

/// The node's objects, as the transfer protocol serves them.
pub(crate) struct CoreObjects {
    pub(crate) events: mpsc::Sender<Event>,
}

impl crate::net::objects::ObjectSource for CoreObjects {
    fn open(
        &self,
        id: ObjectId,
    ) -> futures::future::BoxFuture<'static, Option<crate::net::objects::Served>> {
        let events = self.events.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            events
                .send(Event::Mesh(MeshEvent::Serve { id, reply: tx }))
                .await
                .ok()?;
            rx.await.ok().flatten()
        })
    }
}

impl Core {
    pub(crate) fn mesh_event(&mut self, now: Instant, ev: MeshEvent) {
        match ev {
            MeshEvent::Net(NetEvent::Report { peer, report }) => {
                let Some(m) = self.mesh.as_mut() else { return };
                match m.peers.get_mut(&peer) {
                    Some(l)
                        if (l.report.started_ms, l.report.seq)
                            >= (report.started_ms, report.seq) => {}
                    Some(l) => {
                        l.report = *report;
                        l.sent.clear();
                        l.returned.clear();
                    }
                    None => {
                        m.peers.insert(
                            peer,
                            PeerLoad {
                                report: *report,
                                sent: Vec::new(),
                                returned: Vec::new(),
                            },
                        );
                    }
                }
                self.spill_pass(now);
            }
            MeshEvent::Net(NetEvent::Lost { peer })
            | MeshEvent::Net(NetEvent::Unreachable { peer }) => self.peer_lost(now, peer),
            MeshEvent::Net(NetEvent::Messages { peer, msgs }) => {
                for msg in msgs {
                    self.peer_msg(now, peer, msg);
                }
            }
            MeshEvent::Tick => self.spill_pass(now),
            MeshEvent::Pulled { id, object, result } => self.pulled(id, object, result),
            MeshEvent::BinaryFetched { binary, result } => self.binary_fetched(now, binary, result),
            MeshEvent::Serve { id, reply } => {
                let served = self.serve(id);
                let _ = reply.send(served);
            }
            MeshEvent::Served { id } => self.store.unpin(&id),
            MeshEvent::ActorLocated { actor, found } => self.actor_located(now, actor, found),
            MeshEvent::ProvidersFound { id, peers } => {
                if let Some(r) = self.objects.get_mut(&id).and_then(|e| e.remote.as_mut()) {
                    r.fetching = false;
                    for p in &peers {
                        if !r.holders.contains(p) {
                            r.holders.push(*p);
                        }
                    }
                    if !peers.is_empty() {
                        tracing::debug!(object = %id, holders = peers.len(), "object holders found in the DHT");
                    }
                    self.start_fetch(id);
                }
            }
            MeshEvent::NameResolved {
                conn,
                request,
                found,
            } => {
                let actor = found.map(|(info, peer)| {
                    if let Some(m) = self.mesh.as_mut() {
                        m.actor_homes.insert(info.actor_id, peer);
                    }
                    info
                });
                self.send(conn, ToClient::ActorFound { request, actor });
            }
        }
    }

    /// The connection standing for `peer` (made on first use).
    fn peer_conn(&mut self, peer: PeerId) -> ConnId {
        if let Some(c) = self.mesh.as_ref().and_then(|m| m.conn_of.get(&peer)) {
            return *c;
        }
        let conn = crate::api::next_conn_id();
        // Nothing reads this queue: messages to a peer go out through its link.
        let (tx, _rx) = mpsc::channel(1);
        let digest = blake3::hash(&peer.to_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest.as_bytes()[..8]);
        self.conns.insert(
            conn,
            super::Conn {
                tx,
                role: Role::Cli,
                client: ClientId(u64::from_le_bytes(b)),
                binary: None,
                worker: None,
            },
        );
        if let Some(m) = self.mesh.as_mut() {
            m.conn_of.insert(peer, conn);
            m.peer_of.insert(conn, peer);
        }
        tracing::debug!(%peer, conn, "peer attached");
        conn
    }

    /// Sends what the core meant for a peer's connection to that peer; gives the message
    /// back if `conn` is not a peer's.
    pub(crate) fn send_to_peer(&self, conn: ConnId, msg: ToClient) -> Option<ToClient> {
        let Some((m, peer)) = self
            .mesh
            .as_ref()
            .and_then(|m| Some((m, m.peer_of.get(&conn)?)))
        else {
            return Some(msg);
        };
        let msg = match msg {
            ToClient::Object { id, value } => PeerMsg::Object {
                id,
                value: match value {
                    ObjectValue::Inline(v) => RemoteValue::Inline(v),
                    ObjectValue::Error(e) => RemoteValue::Error(e),
                    ObjectValue::Shared(object) => {
                        // A copy pulled here may be listed too; this node holds one.
                        let mut holders = vec![peer_bytes(&m.me)];
                        if let Some(r) = self.objects.get(&id).and_then(|e| e.remote.as_ref()) {
                            holders.extend(r.holders.iter().filter(|p| *p != peer).map(peer_bytes));
                        }
                        RemoteValue::Shared { object, holders }
                    }
                },
            },
            ToClient::ActorFound { request, actor } => PeerMsg::ActorFound { request, actor },
            other => {
                tracing::debug!(%peer, msg = ?std::mem::discriminant(&other), "a message with no meaning for a peer; dropped");
                return None;
            }
        };
        if let Err(e) = m.net.send_peer(*peer, &msg) {
            tracing::warn!(%peer, error = %e, "message to a peer dropped");
        }
        None
    }

    fn peer_msg(&mut self, now: Instant, peer: PeerId, msg: PeerMsg) {
        match msg {
            PeerMsg::Submit(rt) => self.remote_submit(now, peer, rt),
            PeerMsg::Refuse { task, reason } => {
                let Some(m) = self.mesh.as_mut() else { return };
                if m.spilled.get(&task).map(|x| x.0) != Some(peer) {
                    return;
                }
                m.unspill(&task);
                tracing::debug!(task = %task, %peer, %reason, "peer refused a task; placing it again");
                m.refused.entry(task).or_default().push((peer, now));
                self.place_task(now, task);
            }
            PeerMsg::Object { id, value } => self.remote_object(now, peer, id, value),
            PeerMsg::Fetch { id } => {
                let conn = self.peer_conn(peer);
                self.fetch_requested(conn, peer, id);
            }
            PeerMsg::Release { ids } => {
                let conn = self.peer_conn(peer);
                self.release(conn, ids);
            }
            PeerMsg::Kill {
                actor,
                no_restart,
                drain,
                reason,
            } => {
                let conn = self.peer_conn(peer);
                if drain {
                    if self.actors.out_of_scope(actor) {
                        self.end_out_of_scope(actor);
                    }
                } else if no_restart {
                    if self.actors.get(&actor).is_some_and(|a| !a.is_dead()) {
                        tracing::info!(actor = %actor, %peer, %reason, "actor killed at a peer's request");
                        self.kill_actor(actor, TaskError::ActorKilled { actor, reason });
                    }
                } else {
                    self.kill_request(conn, actor, false);
                }
            }
            PeerMsg::LookupActor { request, name } => {
                let actor = self.actors.lookup(&name);
                if let Some(m) = self.mesh.as_ref() {
                    let _ = m
                        .net
                        .send_peer(peer, &PeerMsg::ActorFound { request, actor });
                }
            }
            PeerMsg::ActorFound { .. } => {
                tracing::debug!(%peer, "unexpected ActorFound; ignored");
            }
        }
    }

    /// A peer wants object `id`: its value now if ready, when ready otherwise; for a large
    /// object only peers hold, where it is.
    fn fetch_requested(&mut self, conn: ConnId, peer: PeerId, id: ObjectId) {
        let elsewhere = self
            .objects
            .get(&id)
            .filter(|e| e.value.is_none())
            .and_then(|e| e.remote.as_ref())
            .and_then(|r| Some((r.object?, r.holders.iter().map(peer_bytes).collect())));
        if let (Some((object, holders)), Some(m)) = (elsewhere, self.mesh.as_ref()) {
            let msg = PeerMsg::Object {
                id,
                value: RemoteValue::Shared { object, holders },
            };
            let _ = m.net.send_peer(peer, &msg);
            return;
        }
        // (An object unknown here is not searched for on a peer's behalf: it is lost.)
        self.get(conn, id);
    }

    /// A process asks for an object this node never heard of: look for a holder in the
    /// DHT (large `put` objects are announced there). Says whether a search started.
    pub(crate) fn fetch_unknown(&mut self, conn: ConnId, id: ObjectId) -> bool {
        if self.mesh.is_none() {
            return false;
        }
        let e = self.objects.entry(id).or_default();
        e.waiters.push(conn);
        // It asks through a ref it holds (its `Hold` found nothing here to count).
        if !e.holders.contains(&conn) {
            e.holders.push(conn);
        }
        e.remote = Some(Default::default());
        self.start_fetch(id);
        true
    }

    /// A value from a peer: a result of a task sent there, or an object fetched.
    fn remote_object(&mut self, now: Instant, peer: PeerId, id: ObjectId, value: RemoteValue) {
        // The result of a task this node sent to `peer`?
        let task = self
            .mesh
            .as_ref()
            .and_then(|m| m.spilled_ret.get(&id).copied())
            .filter(|t| {
                self.mesh
                    .as_ref()
                    .and_then(|m| m.spilled.get(t))
                    .map(|x| x.0)
                    == Some(peer)
            });
        let ours = task.is_some();
        if let Some(task) = task {
            let demand = self.tasks.get(&task).map(|e| e.spec.resources.clone());
            if let Some(m) = self.mesh.as_mut() {
                m.unspill(&task);
                m.refused.remove(&task);
                if let (Some(l), Some(d)) = (m.peers.get_mut(&peer), demand) {
                    // Sent since the last report: no longer counted against it. Sent
                    // before: the report counts it busy, but it is free again.
                    match l.sent.iter().position(|x| *x == d) {
                        Some(pos) => {
                            l.sent.swap_remove(pos);
                        }
                        None => l.returned.push(d),
                    }
                }
            }
            self.finish_task(task);
            // Its peer has room again: tasks waiting for one may go.
            self.spill_pass(now);
        }
        let Some(e) = self.objects.get_mut(&id) else {
            // Nobody wants it any more: let the holder drop its copy.
            if let (RemoteValue::Shared { .. }, Some(m)) = (&value, self.mesh.as_ref()) {
                let _ = m.net.send_peer(peer, &PeerMsg::Release { ids: vec![id] });
            }
            return;
        };
        if e.value.is_some() {
            return;
        }
        // Only the peer that ran the task, or one asked for the object, may give its value.
        let asked = e.remote.as_ref().is_some_and(|r| r.holders.contains(&peer));
        if !ours && !asked {
            tracing::warn!(object = %id, %peer, "a value from a peer that was not asked for it; ignored");
            return;
        }
        if let Some(r) = e.remote.as_mut() {
            r.fetching = false;
        }
        match value {
            RemoteValue::Inline(v) => self.object_ready(id, ObjectValue::Inline(v)),
            RemoteValue::Error(err) => self.object_ready(id, ObjectValue::Error(err)),
            RemoteValue::Shared { object, holders } => {
                let r = e.remote.get_or_insert_with(Default::default);
                r.object = Some(object);
                r.holders = peers_from(&holders);
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
                    // Tasks that take it may be placed now: near a holder, ideally.
                    for t in dependents {
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

    /// Gets object `id` here: asks a peer that knows it, or pulls its bytes once known.
    pub(crate) fn start_fetch(&mut self, id: ObjectId) {
        let Some(m) = self.mesh.as_ref() else { return };
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
        let holders: Vec<PeerId> = r
            .holders
            .iter()
            .filter(|p| **p != m.me && m.peers.contains_key(p))
            .copied()
            .collect();
        if holders.is_empty() && !r.asked_dht {
            // Nobody known holds it (any more): ask the mesh-wide directory once.
            r.asked_dht = true;
            r.fetching = true;
            let (net, events) = (m.net.clone(), self.events.clone());
            tokio::spawn(async move {
                let peers = net
                    .get_providers(shoal_protocol::mesh::object_key(&id))
                    .await
                    .unwrap_or_default();
                let _ = events
                    .send(Event::Mesh(MeshEvent::ProvidersFound { id, peers }))
                    .await;
            });
            return;
        }
        if holders.is_empty() {
            let value = ObjectValue::Error(TaskError::ObjectLost { id });
            self.object_ready(id, value);
            return;
        }
        r.fetching = true;
        match r.object {
            None => {
                let _ = m.net.send_peer(holders[0], &PeerMsg::Fetch { id });
            }
            Some(object) => {
                match self.store.reserve(id, object.size, PULL_HOLDER) {
                    Ok(shoal_protocol::CreateOutcome::Exists) => {
                        // Equal bytes are here already (a content-addressed put).
                        self.object_ready(id, ObjectValue::Shared(object));
                    }
                    Ok(shoal_protocol::CreateOutcome::Write) => {
                        let dest = crate::store::partial_path(self.store.dir(), &id);
                        let (net, events) = (m.net.clone(), self.events.clone());
                        tracing::debug!(object = %id, size = object.size, holders = holders.len(), "pulling an object");
                        tokio::spawn(async move {
                            let result = net
                                .pull_object(&holders, id, object, &dest)
                                .await
                                .map_err(|e| e.to_string());
                            let _ = events
                                .send(Event::Mesh(MeshEvent::Pulled { id, object, result }))
                                .await;
                        });
                    }
                    Err(err) => {
                        tracing::warn!(object = %id, error = %err, "no room to pull an object");
                        let value = ObjectValue::Error(TaskError::ObjectUnavailable {
                            id,
                            message: err.to_string(),
                        });
                        self.object_ready(id, value);
                    }
                }
            }
        }
    }

    fn pulled(&mut self, id: ObjectId, object: SharedObject, result: Result<(), String>) {
        if let Some(r) = self.objects.get_mut(&id).and_then(|e| e.remote.as_mut()) {
            r.fetching = false;
        }
        let value = match result {
            Ok(()) => match self.store.seal(id, id, object) {
                Ok(_) => ObjectValue::Shared(object),
                Err(e) => {
                    self.store.remove(&id);
                    ObjectValue::Error(TaskError::ObjectUnavailable {
                        id,
                        message: e.to_string(),
                    })
                }
            },
            Err(message) => {
                tracing::warn!(object = %id, %message, "pull failed");
                self.store.remove(&id);
                ObjectValue::Error(TaskError::ObjectUnavailable { id, message })
            }
        };
        if !self.objects.contains_key(&id) {
            self.store.remove(&id);
            return;
        }
        self.object_ready(id, value);
    }

    fn serve(&mut self, id: ObjectId) -> Option<crate::net::objects::Served> {
        let Some(ObjectValue::Shared(object)) = self.objects.get(&id).and_then(|e| e.value.clone())
        else {
            return None;
        };
        if !matches!(self.readable(id), ObjectValue::Shared(_)) {
            return None;
        }
        self.store.pin(&id);
        Some(crate::net::objects::Served {
            path: crate::store::object_path(self.store.dir(), &id),
            size: object.size,
            digest: object.digest,
            guard: Box::new(ServeGuard {
                id,
                events: self.events.clone(),
            }),
        })
    }

    /// Object `id` is freed here: peers holding copies for this node may drop them.
    pub(crate) fn release_remote(&self, id: ObjectId, remote: &RemoteCopy) {
        let Some(m) = self.mesh.as_ref() else { return };
        for p in &remote.release_to {
            let _ = m.net.send_peer(*p, &PeerMsg::Release { ids: vec![id] });
        }
    }

    // ---- placement ----

    /// A task ended here: what placement remembered of it goes.
    pub(crate) fn forget_placement(&mut self, task: &TaskId) {
        if let Some(m) = self.mesh.as_mut() {
            m.refused.remove(task);
            m.infeasible.forget(task);
        }
    }

    /// Whether `task` is one this node may send to a peer.
    fn spillable(&self, task: &TaskId) -> bool {
        self.mesh.is_some()
            && self.tasks.get(task).is_some_and(|e| {
                matches!(e.spec.kind, TaskKind::Function | TaskKind::CreateActor(_))
                    && e.hops < MAX_HOPS
            })
    }

    /// Gets copies here of the task's arguments that only peers hold; says whether the
    /// task must wait for them (it is placed again when they arrive).
    pub(crate) fn localize_args(&mut self, task: TaskId) -> bool {
        let Some(entry) = self.tasks.get(&task) else {
            return false;
        };
        let remote: Vec<ObjectId> = entry
            .spec
            .args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref(id) => Some(*id),
                Arg::Value(_) => None,
            })
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
            if let Some(r) = self.objects.get_mut(id).and_then(|e| e.remote.as_mut()) {
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
        let (binary, demand) = (entry.spec.binary, entry.spec.resources.clone());
        let TaskKind::CreateActor(create) = &entry.spec.kind else {
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
                self.fail_task(task, e);
                return;
            }
            if let Some(m) = self.mesh.as_mut() {
                m.actor_homes.remove(&actor);
            }
            self.announce_actor(actor);
        }
        self.sched.submit_actor(now, task, binary, demand);
    }

    /// Decides where a task whose arguments are ready runs: here, at a peer, or later.
    pub(crate) fn place_task(&mut self, now: Instant, task: TaskId) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let demand = entry.spec.resources.clone();
        if !self.spillable(&task) {
            self.run_here(now, task);
            return;
        }
        match self.placement(now, task) {
            Placement::Local => self.run_here(now, task),
            Placement::Spill(peer) => {
                let sent = match self.tasks.get(&task).map(|e| &e.spec.kind) {
                    Some(TaskKind::CreateActor(c)) => {
                        let actor = c.actor_id;
                        self.spill_actor(peer, task, actor)
                    }
                    _ => self.spill_to(now, peer, task),
                };
                if !sent {
                    self.run_here(now, task);
                }
            }
            Placement::Wait | Placement::Infeasible if self.sched.total().contains(&demand) => {
                self.run_here(now, task)
            }
            Placement::Wait => {
                if let Some(m) = self.mesh.as_mut() {
                    m.infeasible.forget(&task);
                    m.remote_wait.push(task);
                    m.no_room = Some(task);
                }
            }
            Placement::Infeasible => {
                let wait = self
                    .tasks
                    .get(&task)
                    .is_some_and(|e| e.spec.wait_for_resources);
                let Some(m) = self.mesh.as_mut() else { return };
                if !wait && m.infeasible.infeasible(task, now) {
                    m.infeasible.forget(&task);
                    let total = self.sched.total().to_string();
                    self.fail_task(
                        task,
                        TaskError::Infeasible {
                            demand: demand.to_string(),
                            total: format!("{total} here, and no peer of the mesh has it"),
                        },
                    );
                } else {
                    m.remote_wait.push(task);
                }
            }
        }
    }

    fn placement(&mut self, now: Instant, task: TaskId) -> Placement<PeerId> {
        let Some(entry) = self.tasks.get(&task) else {
            return Placement::Wait;
        };
        let Some(m) = self.mesh.as_ref() else {
            return Placement::Local;
        };
        // Data locality: bytes of the task's arguments each peer holds.
        let mut arg_bytes: HashMap<PeerId, u64> = HashMap::new();
        for arg in &entry.spec.args {
            if let Arg::Ref(id) = arg {
                if let Some(e) = self.objects.get(id) {
                    if let Some(r) = &e.remote {
                        let size = r.object.map_or(0, |o| o.size);
                        for p in &r.holders {
                            *arg_bytes.entry(*p).or_default() += size;
                        }
                    }
                }
            }
        }
        let demand = Demand {
            resources: entry.spec.resources.clone(),
            binary: entry.spec.binary,
            target: m.target.clone(),
            hops: entry.hops,
        };
        let candidates = m.candidates(entry.spec.binary, &arg_bytes);
        let local_free = self.sched.free().clone();
        let local_total = self.sched.total().clone();
        let Some(m) = self.mesh.as_mut() else {
            return Placement::Local;
        };
        let refused = m.refused_by(&task, now);
        placement::place(
            &demand,
            &local_free,
            &local_total,
            &candidates,
            &refused,
            MAX_HOPS,
        )
    }

    /// Moves waiting tasks to peers that have room.
    pub(crate) fn spill_pass(&mut self, now: Instant) {
        let Some(m) = self.mesh.as_mut() else { return };
        // Tasks only peers can run.
        let waiting = std::mem::take(&mut m.remote_wait);
        let mut rest = waiting.into_iter();
        for t in rest.by_ref() {
            self.place_task(now, t);
            // Back in the queue: nobody has room now; the others wait too (in order).
            if self.mesh.as_ref().is_some_and(|m| m.no_room == Some(t)) {
                break;
            }
        }
        if let Some(m) = self.mesh.as_mut() {
            m.remote_wait.extend(rest);
        }
        // Tasks queued here while a peer has room.
        if self.sched.queued() == 0 {
            return;
        }
        let Some(m) = self.mesh.as_ref() else { return };
        if !m.peers.values().any(|l| {
            let free = l.estimated_free();
            free.get_milli(shoal_protocol::CPU) > 0 || free.0.len() > 1
        }) {
            return;
        }
        let queued = self.sched.queued_tasks();
        let mut moved = Vec::new();
        for (task, _, _) in queued {
            if !self.spillable(&task) {
                continue;
            }
            match self.placement(now, task) {
                Placement::Spill(peer) => {
                    moved.push(task);
                    if !self.spill_to(now, peer, task) {
                        moved.pop();
                    }
                }
                // Nobody has room: later tasks of other shapes may still fit somewhere, but
                // keep the pass short.
                _ => break,
            }
        }
        if !moved.is_empty() {
            let set: std::collections::HashSet<TaskId> = moved.into_iter().collect();
            self.sched.remove_queued(|t| !set.contains(&t));
        }
    }

    /// Sends `task` to `peer`. Returns `false` if it could not be sent.
    fn spill_to(&mut self, _now: Instant, peer: PeerId, task: TaskId) -> bool {
        let Some(rt) = self.remote_task(task) else {
            return false;
        };
        let Some(ret) = self.tasks.get(&task).map(|e| e.ret) else {
            return false;
        };
        let demand = rt.spec.resources.clone();
        let function = rt.spec.function.clone();

        let Some(m) = self.mesh.as_mut() else {
            return false;
        };
        match m.net.send_peer(peer, &PeerMsg::Submit(Box::new(rt))) {
            Ok(()) => {
                tracing::debug!(task = %task, function, %peer, "task spilled to a peer");
                m.spill(task, ret, peer);
                if let Some(l) = m.peers.get_mut(&peer) {
                    l.sent.push(demand);
                }
                true
            }
            Err(e) => {
                tracing::warn!(task = %task, %peer, error = %e, "cannot send a task to a peer");
                false
            }
        }
    }

    /// The task as a peer receives it: small ready arguments inline, the others with where
    /// to fetch them.
    fn remote_task(&self, task: TaskId) -> Option<RemoteTask> {
        let m = self.mesh.as_ref()?;
        let entry = self.tasks.get(&task)?;
        let mut spec = entry.spec.clone();
        let mut locations = Vec::new();
        let me = peer_bytes(&m.me);
        for arg in spec.args.iter_mut() {
            let Arg::Ref(id) = arg else { continue };
            let id = *id;
            match self.objects.get(&id).and_then(|e| e.value.as_ref()) {
                Some(ObjectValue::Inline(v)) => *arg = Arg::Value(v.clone()),
                _ => {
                    let mut holders = vec![me.clone()];
                    if let Some(r) = self.objects.get(&id).and_then(|e| e.remote.as_ref()) {
                        holders.extend(r.holders.iter().map(peer_bytes));
                    }
                    locations.push((id, holders));
                }
            }
        }
        for id in &spec.nested {
            locations.push((*id, vec![me.clone()]));
        }
        Some(RemoteTask {
            hops: entry.hops + 1,
            target: m.target.clone(),
            locations,
            spec,
        })
    }

    // ---- running tasks for peers ----

    fn remote_submit(&mut self, now: Instant, from: PeerId, rt: Box<RemoteTask>) {
        let Some(m) = self.mesh.as_ref() else { return };
        let task = rt.spec.task_id;
        let refuse = |m: &MeshState, reason: String| {
            tracing::debug!(task = %task, peer = %from, %reason, "refusing a task");
            let _ = m.net.send_peer(from, &PeerMsg::Refuse { task, reason });
        };
        if let TaskKind::ActorMethod { actor } = rt.spec.kind {
            // Its actor may be waiting for its binary: the call waits behind it.
            let creating = self.mesh.as_mut().and_then(|m| {
                m.awaiting_binary.values_mut().find(|w| {
                    w.iter().any(|(_, t)| {
                        matches!(&t.spec.kind, TaskKind::CreateActor(c) if c.actor_id == actor)
                    })
                })
            });
            if let Some(waiting) = creating {
                waiting.push((from, rt));
                return;
            }
            let Some(m) = self.mesh.as_ref() else { return };
            if self.actors.get(&actor).is_none() {
                let id = rt.spec.return_id();
                let msg = PeerMsg::Object {
                    id,
                    value: RemoteValue::Error(TaskError::NoSuchActor { actor }),
                };
                let _ = m.net.send_peer(from, &msg);
                return;
            }
            self.admit_remote(now, from, rt);
            return;
        }
        if rt.target != m.target {
            return refuse(m, format!("this peer runs {}, not {}", m.target, rt.target));
        }
        let demand = &rt.spec.resources;
        if !self.sched.total().contains(demand) {
            return refuse(m, format!("this peer has {}", self.sched.total()));
        }
        // Room now, or a place in the queue (as many tasks as this node has CPUs).
        let depth = (self.sched.total().get_milli(CPU) / 1000) as usize;
        let fits_now = self.sched.free().contains(demand) && self.sched.queued() == 0;
        if !fits_now && self.sched.queued() >= depth {
            return refuse(m, "no room now".into());
        }
        let binary = rt.spec.binary;
        if self.binaries.contains_key(&binary) {
            self.admit_remote(now, from, rt);
            return;
        }
        if !m.net.code_shipping() {
            return refuse(m, "this peer does not take shipped code".into());
        }
        let Some(m) = self.mesh.as_mut() else { return };
        let waiting = m.awaiting_binary.entry(binary).or_default();
        waiting.push((from, rt));
        if waiting.len() > 1 {
            return;
        }
        let (net, events) = (m.net.clone(), self.events.clone());
        tracing::info!(%binary, peer = %from, "fetching a binary to run a peer's task");
        tokio::spawn(async move {
            let result = net
                .fetch_binary(from, binary)
                .await
                .map_err(|e| e.to_string());
            let _ = events
                .send(Event::Mesh(MeshEvent::BinaryFetched { binary, result }))
                .await;
        });
    }

    fn binary_fetched(&mut self, now: Instant, binary: BinaryId, result: Result<PathBuf, String>) {
        let Some(m) = self.mesh.as_mut() else { return };
        let waiting = m.awaiting_binary.remove(&binary).unwrap_or_default();
        match result {
            Ok(path) => {
                tracing::info!(%binary, path = %path.display(), "binary fetched");
                if let std::collections::hash_map::Entry::Vacant(e) = self.binaries.entry(binary) {
                    e.insert(path);
                    // Its workers are kept while the node runs (the cache is bounded).
                    self.sched.binary_attached(binary);
                }
                for (from, rt) in waiting {
                    self.admit_remote(now, from, rt);
                }
            }
            Err(reason) => {
                tracing::warn!(%binary, %reason, "binary fetch failed");
                for (from, rt) in waiting {
                    let msg = PeerMsg::Refuse {
                        task: rt.spec.task_id,
                        reason: format!("cannot fetch the binary: {reason}"),
                    };
                    let _ = m.net.send_peer(from, &msg);
                }
            }
        }
    }

    /// Takes a peer's task in: its arguments are fetched from where they are, then it runs
    /// here as if a local process submitted it.
    fn admit_remote(&mut self, now: Instant, from: PeerId, rt: Box<RemoteTask>) {
        let conn = self.peer_conn(from);
        let RemoteTask {
            spec,
            hops,
            locations,
            ..
        } = *rt;
        let task = spec.task_id;
        if self.tasks.contains_key(&task) {
            tracing::debug!(task = %task, "a task submitted twice; ignored");
            return;
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
            let e = self.objects.entry(*id).or_default();
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
        tracing::debug!(task = %task, function = spec.function, peer = %from, "running a task for a peer");
        self.submit(now, conn, spec, hops);
        for id in arg_ids {
            self.start_fetch(id);
        }
        // Nested refs are fetched when someone reads them; objects nobody pinned go.
        for (id, _) in locations {
            self.maybe_free(id);
        }
    }

    // ---- actors elsewhere ----

    /// Creates an actor on `peer`: its calls queued here follow, in order.
    fn spill_actor(&mut self, peer: PeerId, task: TaskId, actor: ActorId) -> bool {
        let Some(rt) = self.remote_task(task) else {
            return false;
        };
        let class = rt.spec.function.clone();
        let demand = rt.spec.resources.clone();
        let Some(m) = self.mesh.as_mut() else {
            return false;
        };
        if let Err(e) = m.net.send_peer(peer, &PeerMsg::Submit(Box::new(rt))) {
            tracing::warn!(actor = %actor, %peer, error = %e, "cannot send an actor to a peer");
            return false;
        }
        tracing::info!(actor = %actor, class, %peer, "actor placed on a peer");
        if let Some(l) = m.peers.get_mut(&peer) {
            l.sent.push(demand);
        }
        let restarts = m.actor_spills.get(&actor).map_or(0, |s| s.2);
        m.actor_spills.insert(actor, (peer, task, restarts));
        m.actor_homes.insert(actor, peer);
        // Its records here are withdrawn; the peer announces its own.
        self.withdraw_actor(actor);
        let queued = self.actors.forget(actor);
        for t in queued {
            if !self.send_call(peer, t) {
                self.fail_task(
                    t,
                    TaskError::PeerLost {
                        peer: peer.to_string(),
                    },
                );
            }
        }
        true
    }

    /// Asks the peer hosting `actor` to end it. Returns `false` if no peer is known to.
    pub(crate) fn kill_remote(&mut self, actor: ActorId, no_restart: bool, reason: &str) -> bool {
        self.end_remote(actor, no_restart, false, reason)
    }

    /// Ends an actor placed on a peer once its calls are done (its creator, `conn`, dropped
    /// all its handles). Says whether the actor is one this node placed.
    pub(crate) fn drain_remote(&mut self, conn: ConnId, actor: ActorId) -> bool {
        let Some((_, task, _)) = self.mesh.as_ref().and_then(|m| m.actor_spills.get(&actor)) else {
            return false;
        };
        let creator = self.tasks.get(task).map(|e| e.spec.owner);
        if creator.is_none() || creator != self.conns.get(&conn).map(|c| c.client) {
            tracing::warn!(conn, actor = %actor, "ActorOutOfScope from a process that does not own the actor; ignored");
            return true;
        }
        self.end_remote(actor, true, true, "all its handles were dropped")
    }

    fn end_remote(&mut self, actor: ActorId, no_restart: bool, drain: bool, reason: &str) -> bool {
        let Some(m) = self.mesh.as_mut() else {
            return false;
        };
        let Some(peer) = m.actor_homes.get(&actor).copied() else {
            return false;
        };
        let msg = PeerMsg::Kill {
            actor,
            no_restart,
            drain,
            reason: reason.to_string(),
        };
        if let Err(e) = m.net.send_peer(peer, &msg) {
            tracing::warn!(actor = %actor, %peer, error = %e, "cannot ask a peer to kill an actor");
        }
        if no_restart {
            if let Some((_, task, _)) = m.actor_spills.remove(&actor) {
                self.finish_task(task);
            }
        }
        true
    }

    /// A process left: the actors it created on peers end too (unless detached).
    pub(crate) fn end_remote_actors_of(&mut self, conn: ConnId) {
        let Some(m) = self.mesh.as_ref() else { return };
        let mine: Vec<(ActorId, bool)> = m
            .actor_spills
            .iter()
            .filter_map(|(actor, (_, task, _))| {
                let e = self.tasks.get(task)?;
                let TaskKind::CreateActor(c) = &e.spec.kind else {
                    return None;
                };
                (e.owner == conn).then_some((*actor, c.detached))
            })
            .collect();
        for (actor, detached) in mine {
            if detached {
                if let Some((_, task, _)) = self
                    .mesh
                    .as_mut()
                    .and_then(|m| m.actor_spills.remove(&actor))
                {
                    self.finish_task(task);
                }
            } else {
                self.kill_remote(actor, true, "its creator exited");
            }
        }
    }

    /// Whether calls to `actor` go to a peer.
    pub(crate) fn actor_is_remote(&self, actor: &ActorId) -> bool {
        self.mesh.is_some() && self.actors.get(actor).is_none()
    }

    /// Sends a call of an actor hosted elsewhere to its peer, in order with the caller's
    /// other calls (its arguments are fetched from here by that peer).
    pub(crate) fn forward_call(&mut self, task: TaskId, actor: ActorId) {
        let Some(m) = self.mesh.as_mut() else { return };
        if let Some(pending) = m.actor_pending.get_mut(&actor) {
            pending.push(task);
            return;
        }
        match m.actor_homes.get(&actor).copied() {
            Some(peer) => {
                if !self.send_call(peer, task) {
                    self.fail_task(
                        task,
                        TaskError::PeerLost {
                            peer: peer.to_string(),
                        },
                    );
                }
            }
            None => {
                m.actor_pending.insert(actor, vec![task]);
                let (net, events) = (m.net.clone(), self.events.clone());
                tokio::spawn(async move {
                    let found = locate_actor(&net, actor).await;
                    let _ = events
                        .send(Event::Mesh(MeshEvent::ActorLocated { actor, found }))
                        .await;
                });
            }
        }
    }

    fn send_call(&mut self, peer: PeerId, task: TaskId) -> bool {
        let Some(mut rt) = self.remote_task(task) else {
            return false;
        };
        rt.hops = MAX_HOPS;
        let Some(ret) = self.tasks.get(&task).map(|e| e.ret) else {
            return false;
        };
        let Some(m) = self.mesh.as_mut() else {
            return false;
        };
        match m.net.send_peer(peer, &PeerMsg::Submit(Box::new(rt))) {
            Ok(()) => {
                m.spill(task, ret, peer);
                true
            }
            Err(e) => {
                tracing::warn!(task = %task, %peer, error = %e, "cannot send an actor call");
                false
            }
        }
    }

    fn actor_located(&mut self, _now: Instant, actor: ActorId, found: Option<(PeerId, String)>) {
        let Some(m) = self.mesh.as_mut() else { return };
        let calls = m.actor_pending.remove(&actor).unwrap_or_default();
        match found {
            Some((peer, _class)) => {
                tracing::debug!(actor = %actor, %peer, "actor located");
                m.actor_homes.insert(actor, peer);
                for t in calls {
                    if !self.send_call(peer, t) {
                        self.fail_task(
                            t,
                            TaskError::PeerLost {
                                peer: peer.to_string(),
                            },
                        );
                    }
                }
            }
            None => {
                for t in calls {
                    self.fail_task(t, TaskError::NoSuchActor { actor });
                }
            }
        }
    }

    /// Looks a name up in the mesh for a local `LookupActor` that found nothing here.
    pub(crate) fn lookup_remote(&mut self, conn: ConnId, request: u64, name: String) -> bool {
        let Some(m) = self.mesh.as_ref() else {
            return false;
        };
        let (net, events) = (m.net.clone(), self.events.clone());
        tokio::spawn(async move {
            let found = resolve_name(&net, &name).await;
            let _ = events
                .send(Event::Mesh(MeshEvent::NameResolved {
                    conn,
                    request,
                    found,
                }))
                .await;
        });
        true
    }

    // ---- failures ----

    fn peer_lost(&mut self, now: Instant, peer: PeerId) {
        let Some(m) = self.mesh.as_mut() else { return };
        m.peers.remove(&peer);
        let lost: Vec<TaskId> = m
            .spilled
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(t, _)| *t)
            .collect();
        for t in &lost {
            m.unspill(t);
        }
        m.actor_homes.retain(|_, p| *p != peer);
        let conn = m.conn_of.remove(&peer);
        if let Some(c) = conn {
            m.peer_of.remove(&c);
        }
        if !lost.is_empty() {
            tracing::warn!(%peer, tasks = lost.len(), "peer lost with tasks of this node; retrying them");
        }
        for t in lost {
            let Some(entry) = self.tasks.get_mut(&t) else {
                continue;
            };
            if matches!(entry.spec.kind, TaskKind::ActorMethod { .. }) {
                self.fail_task(
                    t,
                    TaskError::PeerLost {
                        peer: peer.to_string(),
                    },
                );
                continue;
            }
            if entry.retries_left > 0 {
                entry.retries_left -= 1;
                tracing::info!(task = %t, retries_left = entry.retries_left, "retrying a task lost with its peer");
                self.place_task(now, t);
            } else {
                self.fail_task(
                    t,
                    TaskError::PeerLost {
                        peer: peer.to_string(),
                    },
                );
            }
        }
        // Objects only that peer held are gone; fetches from it are tried elsewhere.
        let ids: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(_, e)| {
                e.value.is_none() && e.remote.as_ref().is_some_and(|r| r.holders.contains(&peer))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(r) = self.objects.get_mut(&id).and_then(|e| e.remote.as_mut()) {
                r.holders.retain(|p| *p != peer);
                r.release_to.retain(|p| *p != peer);
                let was_fetching = std::mem::replace(&mut r.fetching, false);
                let wanted = self.objects.get(&id).is_some_and(|e| {
                    !e.waiters.is_empty() || !e.dependents.is_empty() || was_fetching
                });
                if wanted {
                    self.start_fetch(id);
                }
            }
        }
        // Actors this node placed there come back (elsewhere) if they have restarts left.
        let placed: Vec<(ActorId, TaskId, u32)> = self
            .mesh
            .as_ref()
            .map(|m| {
                m.actor_spills
                    .iter()
                    .filter(|(_, (p, _, _))| *p == peer)
                    .map(|(a, (_, t, r))| (*a, *t, *r))
                    .collect()
            })
            .unwrap_or_default();
        for (actor, task, restarts) in placed {
            let max = match self.tasks.get(&task).map(|e| &e.spec.kind) {
                Some(TaskKind::CreateActor(c)) => c.max_restarts,
                _ => 0,
            };
            if restarts < max {
                tracing::warn!(actor = %actor, %peer, restarts = restarts + 1, "actor lost with its peer; restarting it");
                if let Some(m) = self.mesh.as_mut() {
                    m.actor_spills.insert(actor, (peer, task, restarts + 1));
                    m.actor_homes.remove(&actor);
                    m.refused.entry(task).or_default().push((peer, now));
                }
                self.place_task(now, task);
            } else {
                tracing::warn!(actor = %actor, %peer, "actor lost with its peer");
                if let Some(m) = self.mesh.as_mut() {
                    m.actor_spills.remove(&actor);
                }
                self.finish_task(task);
            }
        }
        // Actors that peer created here end with it, unless detached.
        if let Some(c) = conn {
            let created: Vec<ActorId> = self
                .tasks
                .values()
                .filter(|e| e.owner == c)
                .filter_map(|e| match &e.spec.kind {
                    TaskKind::CreateActor(cr) if !cr.detached => Some(cr.actor_id),
                    _ => None,
                })
                .collect();
            for actor in created {
                self.kill_actor(
                    actor,
                    TaskError::ActorKilled {
                        actor,
                        reason: format!("its creator's peer {peer} left"),
                    },
                );
            }
        }
        // What it asked of this node ends as a departed process's would.
        if let Some(c) = conn {
            self.disconnected(c);
        }
        self.spill_pass(now);
    }
}

/// Finds where an actor lives through the DHT.
async fn locate_actor(net: &NetHandle, actor: ActorId) -> Option<(PeerId, String)> {
    let bytes = net.get_record(actor_key(&actor)).await.ok()??;
    let loc: ActorLocation = codec::decode(&bytes, 4096).ok()?;
    Some((PeerId::from_bytes(&loc.peer).ok()?, loc.class))
}

/// Finds a named actor through the DHT: its id, then its location, then its details from
/// its host.
async fn resolve_name(net: &NetHandle, name: &str) -> Option<(ActorInfo, PeerId)> {
    let bytes = net.get_record(name_key(name)).await.ok()??;
    let actor: ActorId = codec::decode(&bytes, 64).ok()?;
    let (peer, class) = locate_actor(net, actor).await?;
    Some((
        ActorInfo {
            actor_id: actor,
            class,
            owner: ClientId(0),
        },
        peer,
    ))
}
