//! The shell's side of the mesh: turns the network's events into the core's inputs, and the
//! core's mesh outputs into calls on the [`NetHandle`].
//!
//! The core names peers by [`PeerKey`] (the bytes of a libp2p `PeerId`); this is the one
//! place where the two meet.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use libp2p::PeerId;
use shoal_protocol::mesh::{actor_key, name_key, object_key, ActorLocation, PeerKey, PeerMsg};
use shoal_protocol::{codec, ActorId, BinaryId, ObjectId};
use tokio::sync::{mpsc, oneshot};

use super::Event;
use crate::core::{DhtOp, FetchFailure, Input, Job, JobDone, Load, ServedObject};
use crate::net::code::CodeError;
use crate::net::link::NetEvent;
use crate::net::NetHandle;

/// A peer's key.
pub(crate) fn key(peer: &PeerId) -> Option<PeerKey> {
    let key = PeerKey::from_bytes(&peer.to_bytes());
    if key.is_none() {
        tracing::warn!(%peer, "a peer id too long for this node; ignored");
    }
    key
}

/// The core's input for a network event.
pub(crate) fn net_input(ev: NetEvent) -> Option<Input> {
    Some(match ev {
        NetEvent::Report { peer, report } => Input::PeerReport {
            peer: key(&peer)?,
            report,
        },
        NetEvent::Lost { peer } | NetEvent::Unreachable { peer } => {
            Input::PeerLost { peer: key(&peer)? }
        }
        NetEvent::Messages { peer, msgs } => Input::FromPeer {
            peer: key(&peer)?,
            msgs,
        },
    })
}

/// The network, as the shell uses it.
pub(crate) struct NetSide {
    net: NetHandle,
    ids: HashMap<PeerKey, PeerId>,
    events: mpsc::Sender<Event>,
    /// The store directory: pulls write into it, transfers read from it.
    store_dir: std::path::PathBuf,
    /// What the object server sent.
    served: Arc<Served>,
}

impl NetSide {
    /// Connects the network to the core's inbox `events`.
    pub(crate) fn new(
        net: NetHandle,
        events: mpsc::Sender<Event>,
        store_dir: std::path::PathBuf,
    ) -> Self {
        // Network events go straight into the inbox.
        if !net.deliver_to(Arc::new(CoreSink {
            events: events.clone(),
        })) {
            tracing::error!("the network already delivers its events elsewhere");
        }
        let served = Arc::new(Served::default());
        net.serve_objects(Arc::new(CoreObjects {
            events: events.clone(),
            served: served.clone(),
        }));
        Self {
            net,
            ids: HashMap::new(),
            events,
            store_dir,
            served,
        }
    }

    /// Object streams served to peers that sent bytes, and the bytes sent.
    /// Object bytes sent to peers on this node's sealed lane, and the times a holder's lane
    /// could not be used.
    pub(crate) fn lane_counts(&self) -> (u64, u64) {
        let sent = self.net.lane().map_or(0, |lane| lane.bytes_sent());
        (sent, self.net.lane_routes().fallbacks())
    }

    pub(crate) fn served_count(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.served.streams.load(Relaxed),
            self.served.bytes.load(Relaxed),
        )
    }

    fn peer_id(&mut self, key: PeerKey) -> Option<PeerId> {
        if let Some(p) = self.ids.get(&key) {
            return Some(*p);
        }
        match PeerId::from_bytes(key.as_bytes()) {
            Ok(p) => {
                self.ids.insert(key, p);
                Some(p)
            }
            Err(e) => {
                tracing::error!(peer = %key, error = %e, "not a peer id");
                None
            }
        }
    }

    /// Queues `msg` on the link to `peer`; `false` if the link cannot take it.
    pub(crate) fn send(&mut self, peer: PeerKey, msg: &PeerMsg) -> bool {
        let Some(id) = self.peer_id(peer) else {
            return false;
        };
        if let PeerMsg::Submit(rt) = msg {
            // The peer is asked to run a task of this binary: it may fetch it from here.
            self.net
                .servable()
                .grant(&rt.spec.binary, id, std::time::Instant::now());
        }
        match self.net.send_peer(id, msg) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot queue a message for a peer: treating it as lost");
                false
            }
        }
    }

    pub(crate) fn disconnect(&mut self, peer: PeerKey) {
        if let Some(id) = self.peer_id(peer) {
            self.net.disconnect(id);
        }
    }

    pub(crate) fn load(&self, load: Load) {
        self.net.update_load(load);
    }

    pub(crate) fn ask_loads(&self, ask: crate::core::LoadAsk) {
        self.net.ask_loads(ask);
    }

    pub(crate) fn serve_binary(&self, binary: BinaryId, exe: PathBuf, manifest: Option<Vec<u8>>) {
        // A local program's claim: a manifest that is not one is not passed on (peers would
        // reject it anyway), and the binary ships unsigned.
        let manifest = manifest.filter(|m| match crate::auth::code::Manifest::decode(m) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(%binary, error = %e, "a driver's manifest is malformed; its binary ships unsigned");
                false
            }
        });
        self.net.serve_binary(binary, exe, manifest);
    }

    pub(crate) fn dht(&self, op: DhtOp) {
        match op {
            DhtOp::StartProviding(id) => self.net.start_providing(object_key(&id)),
            DhtOp::StopProviding(id) => self.net.stop_providing(object_key(&id)),
            DhtOp::RemoveRecord(key) => self.net.remove_record(key),
        }
    }

    /// The future that carries out `job`, ending in the core's input (if any).
    pub(crate) fn job(
        &mut self,
        job: Job,
    ) -> Pin<Box<dyn Future<Output = Option<Input>> + Send + 'static>> {
        let net = self.net.clone();
        match job {
            Job::Pull {
                id,
                object,
                holders,
                pull,
            } => {
                let dest = crate::store::partial_path(&self.store_dir, &id);
                let holders: Vec<PeerId> = holders
                    .into_iter()
                    .filter_map(|k| self.peer_id(k))
                    .collect();
                Box::pin(async move {
                    let result = net
                        .pull_object(&holders, id, object, &dest)
                        .await
                        .map_err(|e| e.to_string());
                    Some(Input::Job(JobDone::Pulled {
                        pull,
                        id,
                        object,
                        result,
                    }))
                })
            }
            Job::FetchBinary { from, binary } => {
                let from = self.peer_id(from);
                Box::pin(async move {
                    let result = match from {
                        Some(from) => net.fetch_binary(from, binary).await.map_err(|e| match e {
                            CodeError::Rejected(why) => FetchFailure::Rejected(why.to_string()),
                            other => FetchFailure::Failed(other.to_string()),
                        }),
                        None => Err(FetchFailure::Failed("not a peer id".to_string())),
                    };
                    Some(Input::Job(JobDone::BinaryFetched { binary, result }))
                })
            }
            Job::FindProviders { id } => Box::pin(async move {
                let peers = match net.get_providers(object_key(&id)).await {
                    Ok(peers) => peers.iter().filter_map(key).collect(),
                    Err(e) => {
                        tracing::debug!(object = %id, error = %e, "no holders found in the directory");
                        Vec::new()
                    }
                };
                Some(Input::Job(JobDone::ProvidersFound { id, peers }))
            }),
            Job::LocateActor { actor } => Box::pin(async move {
                let found = locate_actor(&net, actor)
                    .await
                    .map(|(peer, loc)| (peer, loc.epoch));
                Some(Input::Job(JobDone::ActorLocated { actor, found }))
            }),
            Job::ResolveName { asker, name } => Box::pin(async move {
                let found = resolve_name(&net, &name).await;
                Some(Input::Job(JobDone::NameResolved { asker, name, found }))
            }),
            Job::PutRecords { records } => Box::pin(async move {
                for (key, value) in records {
                    if let Err(e) = net.put_record(key, value).await {
                        tracing::debug!(error = %e, "record not replicated yet");
                    }
                }
                None
            }),
        }
    }

    /// An object opened by the core for a transfer, with the guard that tells the core
    /// when the transfer ends.
    pub(crate) fn served(&self, s: ServedObject) -> crate::net::objects::Served {
        let id = s.id;
        crate::net::objects::Served {
            path: crate::store::object_path(&self.store_dir, &id),
            size: s.size,
            digest: s.digest,
            guard: Box::new(ServeGuard {
                id,
                events: self.events.clone(),
            }),
        }
    }

    /// Requests for binaries refused to peers never sent a task of them.
    pub(crate) fn binaries_not_allowed(&self) -> u64 {
        self.net.servable().not_allowed()
    }

    /// The mesh as this node sees it, for status.
    pub(crate) fn status(&self) -> shoal_protocol::MeshStatus {
        let view = self.net.view();
        shoal_protocol::MeshStatus {
            peer_id: view.peer_id,
            mesh: view.mesh,
            listen_addrs: view.listen_addrs,
            gossip_bytes_out: view.gossip_bytes_out,
            gossip_bytes_in: view.gossip_bytes_in,
            membership: view.swim,
            transfers: self.net.transfers(),
            labels: self.net.labels().to_vec(),
            peers: view
                .peers
                .into_iter()
                .map(|p| {
                    let r = p.report.unwrap_or_default();
                    shoal_protocol::PeerStatus {
                        peer_id: p.peer_id,
                        addrs: p.addrs,
                        total: r.total,
                        free: r.free,
                        queued: r.queued,
                        running: r.running,
                        store_capacity: r.store_capacity,
                        store_used: r.store_used,
                        target: r.target,
                        last_heard_ms: p.last_heard_ms,
                        rtt_us: p.rtt_us,
                        connected: p.connected,
                        labels: r.labels,
                    }
                })
                .collect(),
        }
    }

    /// Stops the network: its swarm, links and stream servers (see [`NetHandle::shutdown`]).
    pub(crate) async fn shutdown(self) {
        self.net.shutdown().await;
    }
}

/// Unpins a served object when the transfer ends.
struct ServeGuard {
    id: ObjectId,
    events: mpsc::Sender<Event>,
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        let id = self.id;
        match self.events.try_send(Event::Served { id }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(object = %id, "transfer ended after the node stopped")
            }
            Err(mpsc::error::TrySendError::Full(ev)) => {
                // The inbox is busy: the unpin waits its turn rather than being lost.
                let events = self.events.clone();
                tokio::spawn(async move {
                    if events.send(ev).await.is_err() {
                        tracing::debug!(object = %id, "transfer ended after the node stopped");
                    }
                });
            }
        }
    }
}

/// The core's inbox, as the network delivers to it.
struct CoreSink {
    events: mpsc::Sender<Event>,
}

impl crate::net::link::NetSink for CoreSink {
    fn send(&self, ev: NetEvent) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move { self.events.send(Event::Net(ev)).await.is_ok() })
    }

    fn try_send(&self, ev: NetEvent) -> bool {
        self.events.try_send(Event::Net(ev)).is_ok()
    }
}

/// The node's objects, as the transfer protocol serves them.
struct CoreObjects {
    events: mpsc::Sender<Event>,
    served: Arc<Served>,
}

/// Object streams served to peers, and their bytes (read by a scrape of the metrics).
#[derive(Debug, Default)]
pub(crate) struct Served {
    streams: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl crate::net::objects::ObjectSource for CoreObjects {
    /// Without a peer nothing is served: every request names who asks.
    fn open(
        &self,
        id: ObjectId,
    ) -> futures::future::BoxFuture<'static, Option<crate::net::objects::Served>> {
        tracing::warn!(object = %id, "an object request from no known peer; refused");
        Box::pin(async { None })
    }

    fn open_for(
        &self,
        peer: PeerId,
        id: ObjectId,
    ) -> futures::future::BoxFuture<'static, Option<crate::net::objects::Served>> {
        let events = self.events.clone();
        let peer = key(&peer);
        Box::pin(async move {
            let peer = peer?;
            let (tx, rx) = oneshot::channel();
            let event = Event::Serve {
                peer,
                id,
                reply: tx,
            };
            if events.send(event).await.is_err() {
                tracing::debug!(object = %id, "the node stopped; the object is not served");
                return None;
            }
            rx.await.ok().flatten()
        })
    }

    fn served(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if bytes > 0 {
            self.served.streams.fetch_add(1, Relaxed);
            self.served.bytes.fetch_add(bytes, Relaxed);
        }
    }
}

/// Finds where an actor lives through the DHT.
async fn locate_actor(net: &NetHandle, actor: ActorId) -> Option<(PeerKey, ActorLocation)> {
    let bytes = net.get_record(actor_key(&actor)).await.ok()??;
    let loc: ActorLocation = codec::decode(&bytes, 4096).ok()?;
    Some((PeerKey::from_bytes(&loc.peer)?, loc))
}

/// Finds a named actor through the DHT: its id, then its peer.
async fn resolve_name(net: &NetHandle, name: &str) -> Option<(ActorId, PeerKey)> {
    let bytes = net.get_record(name_key(name)).await.ok()??;
    let actor: ActorId = codec::decode(&bytes, 64).ok()?;
    let (peer, _) = locate_actor(net, actor).await?;
    Some((actor, peer))
}
