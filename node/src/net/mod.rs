//! The mesh: one task owns the libp2p `Swarm`; everything else talks to it through a
//! cloneable [`NetHandle`] (commands over a bounded channel, answers over oneshots).
//!
//! Behaviours: identify (carries the mesh name in its protocol version: a peer of another
//! mesh is disconnected on sight), ping (liveness and RTT), Kademlia (own protocol name per
//! mesh, server mode, fed from identify) for records, gossipsub (signed, validated) for load
//! reports, libp2p-stream for control links ([`link`]), objects ([`objects`]) and binaries
//! ([`code`]), and mDNS when asked. TCP + Noise + Yamux; QUIC too with the `quic` feature;
//! an in-process memory transport for tests. Every stream frames its messages the same way
//! ([`framed`]).
//!
//! The view of the other peers is [`membership::Membership`], a pure state machine fed here
//! with connection, ping and gossip events.
//!
//! [`NetHandle::shutdown`] stops it all in stages: every task the network starts, libp2p's
//! connection tasks included, is tracked (by a cancellation-token tree and task trackers)
//! and ends.
//!
//! With the `test-utils` feature (tests and benchmarks only) a node also answers a
//! request-response ping (`rpc`, `NetHandle::request`) and bulk streams (`bulk`), can be kept
//! apart from given peers (`NetConfig::blocked`) and can publish raw load reports
//! (`NetHandle::publish_raw_report`). Without it, those protocols are neither opened nor
//! answered (and those items do not exist, so the docs name them without links).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::kad::{self, store::MemoryStore, Mode, QueryId, QueryResult, Quorum, RecordKey};
use libp2p::multiaddr::Protocol;
#[cfg(feature = "test-utils")]
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    identify, identity, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use shoal_protocol::mesh::{LoadReport, PeerMsg, MAX_REPORT_BYTES};
#[cfg(feature = "test-utils")]
use shoal_protocol::mesh::{PeerRequest, PeerResponse};
use shoal_protocol::{codec, BinaryId};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

pub mod admission;
pub mod chunks;
pub mod code;
pub mod framed;
pub mod lane;
pub mod limits;
pub mod link;
pub mod membership;
pub mod objects;
pub mod progress;
#[cfg(feature = "test-utils")]
pub mod rpc;
pub mod swim;
pub(crate) mod tasks;

use crate::auth::Statement;
use membership::{Change, Membership, MembershipConfig};
use tasks::Tasks;

/// Capacity of the command channel into the network task.
const COMMANDS: usize = 1024;
/// Capacity of the channel of peers to disconnect for sending malformed data.
const BAD_PEERS: usize = 64;
/// Providers of a resource asked for their loads in one round at most.
const RESOURCE_PROVIDERS_ASKED: usize = 16;
/// How long a stopping node waits for its word that it leaves to go out.
const SWIM_LEAVE_GRACE: Duration = Duration::from_millis(500);
/// Rejected binaries remembered so that each is logged once.
const REJECTIONS_LOGGED: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(1024).expect("not zero");

/// Which transport the swarm runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP + Noise + Yamux (and QUIC with the `quic` feature, for `/quic-v1` addresses).
    Tcp,
    /// In-process memory transport + Noise + Yamux, for tests of many peers in one process.
    Memory,
}

/// How a node proves membership of its mesh, and whom it admits: what a join token holds
/// (its bootstrap addresses go to [`NetConfig::peers`]).
pub type Admission = crate::auth::JoinToken;

/// How a node joins a mesh.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The mesh's name (its authority's): peers of other meshes are never admitted.
    pub mesh: String,
    /// Membership: only peers with a credential from the mesh's authority are admitted.
    pub admission: Admission,
    /// A private-network key (libp2p pnet): an optional outer layer under Noise, TCP only;
    /// with one, QUIC is off and only peers with the same key get past the first bytes.
    pub psk: Option<libp2p::pnet::PreSharedKey>,
    /// Where a renewed credential (`credential`, a join token) and revocations
    /// (`revocations`, one per line) are picked up while the node runs; `None`: nowhere.
    pub state_dir: Option<std::path::PathBuf>,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to bootstrap from (with a `/p2p/<id>` suffix, or without).
    pub peers: Vec<Multiaddr>,
    /// mDNS discovery on the LAN.
    pub mdns: bool,
    /// The failure detector's timings.
    pub membership: MembershipConfig,
    /// Membership by SWIM with Lifeguard ([`swim`]) instead of the load reports' expiry:
    /// failure detection and the list of members cost each peer a bounded amount whatever
    /// the mesh's size. Every peer of a mesh must use the same. `None`: the reports decide.
    pub swim: Option<crate::core::swim::SwimConfig>,
    /// A load report goes out at least this often.
    pub report_interval: Duration,
    /// And at most this often (changes in between are merged).
    pub report_min_interval: Duration,
    /// Transport.
    pub transport: TransportKind,
    /// Peers never to connect with (tests use this to keep two peers apart).
    #[cfg(feature = "test-utils")]
    pub blocked: Vec<PeerId>,
    /// Kademlia records and provider records expire after this unless republished.
    pub record_ttl: Duration,
    /// Whether this peer serves its binaries to others (and may be sent theirs).
    pub code_shipping: bool,
    /// This peer's labels (`--label key=value`), published in its load reports for the
    /// label selectors of tasks and actors.
    pub labels: Vec<(String, String)>,
    /// The publishers whose signed binaries this peer runs when a peer ships them (default:
    /// none; `shoal node` adds `--trust-publisher` keys and the user's default key).
    pub code_policy: crate::auth::code::CodePolicy,
    /// Where fetched binaries are kept (default: a `code` directory in the system's
    /// temporary directory, per process).
    pub code_cache: Option<std::path::PathBuf>,
    /// Bytes of fetched binaries kept at most.
    pub code_cache_bytes: u64,
    /// A control link that makes no progress (not even 1 MiB written) for this long while
    /// messages wait is broken: the peer has stopped reading. Default 20 s.
    pub link_stall: Duration,
    /// Whether this peer sends large object ranges on its sealed lane ([`lane`]): a TCP
    /// listener beside the first TCP listen address, its bytes sealed with AES-256-GCM
    /// under keys handed over on the authenticated stream. Default on; off, every byte goes
    /// on libp2p streams.
    pub lane: bool,
    /// The lane's port (0: any free port).
    pub lane_port: u16,
}

impl NetConfig {
    /// Defaults for the mesh `admission` admits to: listen on nothing, no peers, mDNS on
    /// (it finds peers of this mesh only), 3 s failure timeout, reports every second.
    pub fn new(admission: Admission) -> Self {
        Self {
            mesh: admission.trust.mesh.clone(),
            admission,
            psk: None,
            state_dir: None,
            listen: Vec::new(),
            peers: Vec::new(),
            mdns: true,
            membership: MembershipConfig::default(),
            swim: None,
            report_interval: Duration::from_millis(1000),
            report_min_interval: Duration::from_millis(100),
            transport: TransportKind::Tcp,
            #[cfg(feature = "test-utils")]
            blocked: Vec::new(),
            record_ttl: Duration::from_secs(60),
            code_shipping: true,
            labels: Vec::new(),
            code_policy: Default::default(),
            code_cache: None,
            code_cache_bytes: 2 << 30,
            link_stall: Duration::from_secs(20),
            lane: true,
            lane_port: 0,
        }
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The identity key could not be read or written.
    #[error("identity key {path}: {message}")]
    Identity {
        /// The key file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The swarm could not be built or could not listen.
    #[error("network: {0}")]
    Swarm(String),
    /// The network has been shut down ([`NetHandle::shutdown`]), or its task is gone.
    #[error("the network has stopped")]
    Stopped,
    /// A request to a peer failed.
    #[error("request to {peer} failed: {message}")]
    Request {
        /// The peer.
        peer: String,
        /// Why.
        message: String,
    },
    /// A DHT query failed.
    #[error("DHT: {0}")]
    Dht(String),
    /// This node's own credential is not valid (expired, revoked, for another peer).
    #[error("this node's credential: {0}")]
    Admission(String),
}

/// Loads the node's identity from `dir/identity.key`, making one on first use (so that a
/// restarted node keeps its peer id).
pub fn load_or_create_identity(dir: &Path) -> Result<identity::Keypair, NetError> {
    let path = dir.join("identity.key");
    let err = |message: String| NetError::Identity {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let key = identity::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// This node's load, as the core reports it to the network task.
pub use crate::core::Load;

/// One other peer, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// Its peer id.
    pub peer_id: String,
    /// Where it was seen.
    pub addrs: Vec<String>,
    /// Its last load report.
    pub report: Option<LoadReport>,
    /// Milliseconds since it was last heard from.
    pub last_heard_ms: u64,
    /// Last ping round trip, in microseconds.
    pub rtt_us: Option<u64>,
    /// Whether a connection to it is open.
    pub connected: bool,
}

/// The mesh as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshView {
    /// This node's peer id.
    pub peer_id: String,
    /// The mesh name.
    pub mesh: String,
    /// Addresses this node listens on (with `/p2p/<id>`).
    pub listen_addrs: Vec<String>,
    /// The other peers.
    pub peers: Vec<PeerView>,
    /// Bytes of load reports published by this node (payloads, before libp2p framing).
    pub gossip_bytes_out: u64,
    /// Bytes of load reports received (payloads, including relayed duplicates filtered by
    /// gossipsub: only those delivered here).
    pub gossip_bytes_in: u64,
    /// Membership's figures, when SWIM runs it.
    pub swim: Option<shoal_protocol::MembershipStatus>,
    /// Times a peer was disconnected for sending malformed data.
    pub bad_peers: u64,
}

/// Where the answer to a command goes.
type Reply<T> = oneshot::Sender<Result<T, NetError>>;

enum Command {
    Load(Load),
    /// Ask members for their loads (loads are sampled).
    AskLoads(crate::core::LoadAsk),
    /// Apply and spread a revocation.
    Revoke(crate::auth::Revocation),
    /// Adopt and spread a publisher grant.
    GrantPublisher(crate::auth::code::PublisherGrant),
    /// This node's renewed credential: use it and tell the mesh.
    Renew(crate::auth::Credential),
    Dial(Multiaddr),
    /// Drop the connections to a peer the core considers lost.
    Forget(PeerId),
    /// Publish these bytes as a load report, as they are.
    #[cfg(feature = "test-utils")]
    PublishRaw(Vec<u8>),
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    GetRecord {
        key: Vec<u8>,
        reply: Reply<Option<Vec<u8>>>,
    },
    RemoveRecord {
        key: Vec<u8>,
    },
    StartProviding {
        key: Vec<u8>,
    },
    StopProviding {
        key: Vec<u8>,
    },
    GetProviders {
        key: Vec<u8>,
        reply: Reply<Vec<PeerId>>,
    },
    #[cfg(feature = "test-utils")]
    Request {
        peer: PeerId,
        request: PeerRequest,
        reply: Reply<PeerResponse>,
    },
}

/// A cloneable handle to the network task.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    view: Arc<Mutex<MeshView>>,
    streams: libp2p_stream::Control,
    servable: code::Servable,
    code_cache: Arc<Mutex<code::BinaryCache>>,
    /// Transfers to this peer under way.
    transfers: progress::Transfers,
    code_protocol: StreamProtocol,
    code_shipping: bool,
    samples_loads: bool,
    labels: Vec<(String, String)>,
    /// Publishers trusted on this node's command line (and its user's own key).
    code_policy: Arc<crate::auth::code::CodePolicy>,
    /// Admission's state: the publishers the mesh's authority names, too.
    gate: Arc<admission::Gate>,
    /// Binaries whose rejection was logged (each once).
    rejected: Arc<Mutex<lru::LruCache<BinaryId, ()>>>,
    links: link::Links,
    events: link::EventSink,
    obj_protocol: StreamProtocol,
    /// This peer's sealed lane, when it has one.
    lane: Option<Arc<lane::Lane>>,
    /// Where peers' lanes are.
    routes: lane::Routes,
    limits: limits::PeerLimits,
    tasks: Tasks,
    /// The per-process code cache to remove when the network stops (none when configured).
    temp_cache: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl NetHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The current view of the mesh.
    pub fn view(&self) -> MeshView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reports this node's load (published on change, rate-limited). Never waits: a full
    /// command queue drops the update (a newer one follows).
    pub fn update_load(&self, load: Load) {
        match self.commands.try_send(Command::Load(load)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(
                    "load update dropped: the network task is busy; a newer one follows"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("load update dropped: the network has stopped");
            }
        }
    }

    /// Asks members for their loads (a mesh under SWIM samples them); the answers come as
    /// reports. Never waits: a full command queue drops the round, and the node asks again
    /// at its next look at waiting tasks.
    pub fn ask_loads(&self, ask: crate::core::LoadAsk) {
        if let Err(e) = self.commands.try_send(Command::AskLoads(ask)) {
            tracing::debug!(error = %e, "a round of asking for loads dropped; the node asks again");
        }
    }

    /// Whether this node samples its peers' loads (the mesh runs SWIM) rather than hearing
    /// every report.
    pub fn samples_loads(&self) -> bool {
        self.samples_loads
    }

    /// Queues a command that has no answer, without waiting. Dropped, with a warning, when
    /// the network task is this far behind; `Err` once the network has stopped.
    fn tell(&self, cmd: Command, what: &'static str) -> Result<(), NetError> {
        match self.commands.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    command = what,
                    capacity = COMMANDS,
                    "the network task is behind; command dropped"
                );
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NetError::Stopped),
        }
    }

    /// Closes the connections to a peer this node considers lost, so that the peer learns
    /// it too (loss is mutual: neither side keeps waiting for the other). Never waits.
    pub fn disconnect(&self, peer: PeerId) {
        // The node has written off what is queued for it: the old link's end is no news.
        self.links.forget(peer);
        if self.commands.try_send(Command::Forget(peer)).is_err() {
            tracing::warn!(%peer, "command queue full: a lost peer stays connected for now");
        }
    }

    /// Dials a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.running()?;
        self.commands
            .send(Command::Dial(addr))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// `Err(Stopped)` once the network is shutting down.
    fn running(&self) -> Result<(), NetError> {
        if self.tasks.stopping() {
            return Err(NetError::Stopped);
        }
        Ok(())
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetError> {
        self.running()?;
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Stores `key → value` in the DHT (republished while this node runs; expires after it
    /// stops).
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::PutRecord { key, value, reply })
            .await
    }

    /// Looks `key` up in the DHT.
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, NetError> {
        self.ask(|reply| Command::GetRecord { key, reply }).await
    }

    /// Stops republishing `key` (and forgets it here); other copies expire. Once the
    /// network has stopped there is nothing to stop: ignored.
    pub fn remove_record(&self, key: Vec<u8>) {
        if self
            .tell(Command::RemoveRecord { key }, "remove a record")
            .is_err()
        {
            tracing::debug!("record not removed: the network has stopped (it expires)");
        }
    }

    /// Announces that this node holds `key` (an object). Ignored, with a log line, once
    /// the network has stopped.
    pub fn start_providing(&self, key: Vec<u8>) {
        if self
            .tell(Command::StartProviding { key }, "start providing")
            .is_err()
        {
            tracing::debug!("object not announced: the network has stopped");
        }
    }

    /// Withdraws the announcement. Once the network has stopped there is nothing to
    /// withdraw: ignored.
    pub fn stop_providing(&self, key: Vec<u8>) {
        if self
            .tell(Command::StopProviding { key }, "stop providing")
            .is_err()
        {
            tracing::debug!("announcement not withdrawn: the network has stopped (it expires)");
        }
    }

    /// The peers that announced `key`.
    pub async fn get_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
    }

    /// Sends a control request to `peer` (test hook: the request-response ping).
    #[cfg(feature = "test-utils")]
    pub async fn request(
        &self,
        peer: PeerId,
        request: PeerRequest,
    ) -> Result<PeerResponse, NetError> {
        self.ask(|reply| Command::Request {
            peer,
            request,
            reply,
        })
        .await
    }

    /// Publishes `bytes` on the load-report topic as they are, signed by this peer: lets
    /// tests check that peers refuse forged and malformed reports. Not for normal use.
    #[cfg(feature = "test-utils")]
    pub async fn publish_raw_report(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.running()?;
        self.commands
            .send(Command::PublishRaw(bytes))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// The binaries this peer serves to others (when it ships code).
    pub fn servable(&self) -> &code::Servable {
        &self.servable
    }

    /// Serves binary `id` (at `path`, with its encoded `manifest`) to the peers it is sent
    /// tasks of, and makes its chunk index now, in the background, so that a peer that
    /// fetches it by chunks does not wait for the index (a hundred megabytes take about
    /// 130 ms of one CPU to read, check and cut).
    pub fn serve_binary(&self, id: BinaryId, path: std::path::PathBuf, manifest: Option<Vec<u8>>) {
        self.servable.insert(id, path, manifest);
        if !self.code_shipping || self.tasks.stopping() {
            return;
        }
        let servable = self.servable.clone();
        self.tasks.spawn(
            async move {
                match servable.index(&id).await {
                    Some(Ok(index)) => {
                        tracing::debug!(chunks = index.len(), "indexed a binary to serve")
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot index a binary to serve; peers will fetch it whole")
                    }
                    None => tracing::debug!("a binary stopped being served before it was indexed"),
                }
            }
            .instrument(tracing::debug_span!("index_binary", binary = %id)),
        );
    }

    /// Fetches binary `id` from `peer` (its manifest checked against this peer's code
    /// policy first: the publishers it trusts and those the mesh's authority names; then
    /// its hash; cached); returns an executable path. Refused when this
    /// peer does not take shipped code. The fetched binary is served onward with its
    /// manifest.
    pub async fn fetch_binary(
        &self,
        peer: PeerId,
        id: BinaryId,
    ) -> Result<std::path::PathBuf, code::CodeError> {
        if self.tasks.stopping() {
            return Err(code::CodeError::Stopped);
        }
        if !self.code_shipping {
            return Err(code::CodeError::Refused(self.peer_id));
        }
        let mut control = self.streams.clone();
        let target = target();
        // The node's own list, and the publishers the mesh's authority names now.
        let mut policy = (*self.code_policy).clone();
        policy.trusted.extend(self.gate.granted_publishers());
        let check = code::Check {
            policy: &policy,
            target: &target,
        };
        let tracked = self
            .transfers
            .start(shoal_protocol::Transfer::Binary(id), 0, &[peer]);
        let fetched = code::fetch(
            &mut control,
            self.code_protocol.clone(),
            &self.limits,
            peer,
            id,
            &self.code_cache,
            check,
            &tracked,
        )
        .await;
        drop(tracked);
        let (path, manifest) = match fetched {
            Ok(f) => f,
            Err(code::CodeError::Rejected(why)) => {
                let first = self
                    .rejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(id, ())
                    .is_none();
                if first {
                    tracing::warn!(binary = %id, %peer, reason = %why, "not running a peer's binary: its code is rejected");
                } else {
                    tracing::debug!(binary = %id, %peer, reason = %why, "code rejected again");
                }
                return Err(code::CodeError::Rejected(why));
            }
            Err(e) => return Err(e),
        };
        self.servable.insert(id, path.clone(), manifest);
        if let Some(index) = self
            .code_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .index(&id)
        {
            // Fetched by chunks: this peer serves it with the same index.
            self.servable.set_index(&id, index);
        }
        Ok(path)
    }

    /// Bytes of binaries this peer received from others so far (all of each whole fetch,
    /// only the missing chunks of a fetch by chunks).
    pub fn code_fetched_bytes(&self) -> u64 {
        self.code_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fetched()
    }

    /// Whether this peer takes binaries it does not hold.
    pub fn code_shipping(&self) -> bool {
        self.code_shipping
    }

    /// This peer's labels.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// Hands the network's events (load reports, lost peers, control messages) to `sink`,
    /// the one consumer that handles them. `false` if there is one already.
    pub fn deliver_to(&self, sink: Arc<dyn link::NetSink>) -> bool {
        self.events.set(sink).is_ok()
    }

    /// Queues a control message for `peer` (in order with the others sent to it).
    /// [`link::LinkError::Stopped`] once the network is shutting down.
    pub fn send_peer(&self, peer: PeerId, msg: &PeerMsg) -> Result<(), link::LinkError> {
        self.links.send(peer, msg)
    }

    /// Serves this node's objects to peers that pull them (once; later calls, and calls
    /// once the network is shutting down, are ignored with a warning).
    pub fn serve_objects(&self, source: Arc<dyn objects::ObjectSource>) {
        if self.tasks.stopping() {
            tracing::warn!("objects not served: the network has stopped");
            return;
        }
        let mut control = self.streams.clone();
        match control.accept(self.obj_protocol.clone()) {
            Ok(incoming) => {
                let limits = self.limits.clone();
                let stop = self.tasks.accept_token();
                let lane = self.lane.clone();
                self.tasks
                    .spawn(objects::server(incoming, source, lane, limits, stop))
            }
            Err(e) => tracing::warn!(error = %e, "objects are served already"),
        }
    }

    /// Pulls object `id` from `holders` into `dest` (an existing file), checking its digest.
    pub async fn pull_object(
        &self,
        holders: &[PeerId],
        id: shoal_protocol::ObjectId,
        object: shoal_protocol::SharedObject,
        dest: &Path,
    ) -> Result<(), objects::ObjectError> {
        if self.tasks.stopping() {
            return Err(objects::ObjectError::Stopped);
        }
        // (The core takes a large value from a peer only with its digest.)
        let Some(digest) = object.digest else {
            return Err(objects::ObjectError::NoDigest(id));
        };
        let mut control = self.streams.clone();
        let tracked =
            self.transfers
                .start(shoal_protocol::Transfer::Object(id), object.size, holders);
        objects::pull(
            &mut control,
            self.obj_protocol.clone(),
            &self.limits,
            &self.routes,
            holders,
            id,
            object.size,
            digest,
            dest,
            tracked.progress(),
        )
        .await
    }

    /// The objects and binaries being pulled to this peer now.
    pub fn transfers(&self) -> Vec<shoal_protocol::TransferStatus> {
        self.transfers.snapshot()
    }

    /// This peer's sealed lane, when it has one (for serving objects on other protocols,
    /// in tests and benchmarks).
    pub fn lane(&self) -> Option<Arc<lane::Lane>> {
        self.lane.clone()
    }

    /// Where the lanes of this peer's connected peers are.
    pub fn lane_routes(&self) -> lane::Routes {
        self.routes.clone()
    }

    /// A control for opening and accepting bulk streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Stops the network and returns once it has stopped, in stages: stop accepting streams
    /// and queueing messages to peers; let the streams being served and the links being
    /// written finish (for at most five seconds, then drop them); stop listening, close
    /// the connections and drop the swarm; wait for every task the network started,
    /// libp2p's connection tasks included. Idempotent: later or concurrent calls return
    /// once the same stop is complete. Afterwards the other methods fail with
    /// [`NetError::Stopped`] (or their own error type's `Stopped`).
    pub async fn shutdown(&self) {
        tracing::debug!(peer = %self.peer_id, "shutting the network down");
        // Stage 1 stops accepting (the acceptors watch the token); the link queues are
        // dropped so their writers drain and end.
        self.tasks.accept_token().cancel();
        self.links.close();
        self.tasks.shutdown().await;
        if let Some(dir) = &self.temp_cache {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "the code cache was not removed")
                }
            }
        }
        tracing::info!(peer = %self.peer_id, "network stopped");
    }
}

/// The request-response ping of tests and benchmarks.
#[cfg(feature = "test-utils")]
type RpcBehaviour = request_response::Behaviour<rpc::BincodeCodec<PeerRequest, PeerResponse>>;
/// Without `test-utils`: a behaviour that speaks no protocol.
#[cfg(not(feature = "test-utils"))]
type RpcBehaviour = libp2p::swarm::dummy::Behaviour;

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    rpc: RpcBehaviour,
    stream: libp2p_stream::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The protocol names of a mesh: peers of different meshes never speak each other's.
pub struct Protocols {
    /// identify's protocol version.
    pub identify: String,
    /// Kademlia.
    pub kad: StreamProtocol,
    /// Control requests (the ping of tests and benchmarks).
    #[cfg(feature = "test-utils")]
    pub rpc: StreamProtocol,
    /// Bulk bytes (tests and benchmarks).
    #[cfg(feature = "test-utils")]
    pub bulk: StreamProtocol,
    /// Binaries (code shipping).
    pub code: StreamProtocol,
    /// Control links (tasks, results, object requests).
    pub ctl: StreamProtocol,
    /// Object transfer.
    pub obj: StreamProtocol,
    /// Membership messages (SWIM).
    pub swim: StreamProtocol,
    /// The gossip topic of load reports.
    pub load_topic: String,
    /// The gossip topic of membership notices (revocations, renewed credentials).
    pub admin_topic: String,
}

impl Protocols {
    /// The names for mesh `mesh`.
    pub fn for_mesh(mesh: &str) -> Result<Self, NetError> {
        let p = |s: String| {
            StreamProtocol::try_from_owned(s)
                .map_err(|e| NetError::Swarm(format!("mesh name: {e}")))
        };
        Ok(Self {
            identify: format!("/shoal/{mesh}/1.0.0"),
            kad: p(format!("/shoal/{mesh}/kad/1.0.0"))?,
            #[cfg(feature = "test-utils")]
            rpc: p(format!("/shoal/{mesh}/rpc/1"))?,
            #[cfg(feature = "test-utils")]
            bulk: p(format!("/shoal/{mesh}/bulk/1"))?,
            code: p(format!("/shoal/{mesh}/code/2"))?,
            ctl: p(format!("/shoal/{mesh}/ctl/12"))?,
            obj: p(format!("/shoal/{mesh}/obj/2"))?,
            swim: p(format!("/shoal/{mesh}/swim/1"))?,
            load_topic: format!("shoal/{mesh}/load/v2"),
            admin_topic: format!("shoal/{mesh}/admin/v1"),
        })
    }
}

fn build_behaviour(
    key: &identity::Keypair,
    config: &NetConfig,
    protocols: &Protocols,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let identify = identify::Behaviour::new(
        identify::Config::new(protocols.identify.clone(), key.public())
            .with_push_listen_addr_updates(true)
            .with_interval(Duration::from_secs(60)),
    );
    // Round-trip times for the view; liveness comes from connections and reports, so pings
    // need not be frequent (each connection pings on its own).
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10)),
    );
    let mut kad_config = kad::Config::new(protocols.kad.clone());
    kad_config
        .set_record_ttl(Some(config.record_ttl))
        .set_publication_interval(Some(config.record_ttl / 3))
        .set_provider_record_ttl(Some(config.record_ttl))
        .set_provider_publication_interval(Some(config.record_ttl / 3))
        .set_query_timeout(Duration::from_secs(10));
    let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
    // A private mesh has no confirmed external addresses: answer queries regardless.
    kad.set_mode(Some(Mode::Server));
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_initial_delay(Duration::from_millis(100))
        .heartbeat_interval(Duration::from_millis(500))
        .max_transmit_size(MAX_REPORT_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))?;
    let gossipsub =
        gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
    #[cfg(feature = "test-utils")]
    let rpc = request_response::Behaviour::with_codec(
        rpc::BincodeCodec::default(),
        [(protocols.rpc.clone(), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    #[cfg(not(feature = "test-utils"))]
    let rpc = libp2p::swarm::dummy::Behaviour;
    let mdns = if config.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    Ok(Behaviour {
        identify,
        ping,
        kad,
        gossipsub,
        rpc,
        stream: libp2p_stream::Behaviour::new(),
        mdns: mdns.into(),
    })
}

fn build_swarm(
    key: identity::Keypair,
    config: &NetConfig,
    protocols: &Protocols,
    tasks: &Tasks,
    gate: &Arc<admission::Gate>,
) -> Result<Swarm<Behaviour>, NetError> {
    use libp2p::core::upgrade::Version;
    use libp2p::Transport;
    let err = |e: &dyn std::fmt::Display| NetError::Swarm(e.to_string());
    // libp2p's connection tasks are spawned through the network's tracker (not loose on
    // the runtime), so that shutdown waits for them.
    let idle = |_: libp2p::swarm::Config| {
        libp2p::swarm::Config::with_executor(tasks.executor())
            .with_idle_connection_timeout(Duration::from_secs(300))
    };
    // Every transport runs admission (see [`admission`]) between authentication and the
    // multiplexer: a connection the swarm sees is one both ends admitted.
    let admit = {
        let gate = gate.clone();
        move |peer: &PeerId, _: &libp2p::core::ConnectedPoint| {
            admission::Admit::new(yamux::Config::default(), gate.clone(), *peer)
        }
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let swarm = match config.transport {
        TransportKind::Tcp => {
            let psk = config.psk;
            let b = builder
                .with_other_transport(|k| {
                    let noise = noise::Config::new(k)?;
                    let tcp = tcp::tokio::Transport::new(tcp::Config::default());
                    let transport = match psk {
                        None => tcp
                            .upgrade(Version::V1Lazy)
                            .authenticate(noise)
                            .multiplex_ext(admit)
                            .map(|(p, m), _| (p, libp2p::core::muxing::StreamMuxerBox::new(m)))
                            .boxed(),
                        Some(psk) => tcp
                            .and_then(move |socket, _| {
                                libp2p::pnet::PnetConfig::new(psk).handshake(socket)
                            })
                            .upgrade(Version::V1Lazy)
                            .authenticate(noise)
                            .multiplex_ext(admit)
                            .map(|(p, m), _| (p, libp2p::core::muxing::StreamMuxerBox::new(m)))
                            .boxed(),
                    };
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(transport)
                })
                .map_err(|e| err(&e))?;
            #[cfg(feature = "quic")]
            let b = {
                let gate = gate.clone();
                let off = config.psk.is_some();
                if off {
                    tracing::info!("a private-network key is set: QUIC is off (pnet is TCP only)");
                }
                b.with_other_transport(move |k| {
                    use libp2p::core::transport::OptionalTransport;
                    if off {
                        return OptionalTransport::none();
                    }
                    OptionalTransport::some(
                        libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(k)).and_then(
                            move |(peer, conn), endpoint| {
                                admission::admit_muxer(
                                    gate.clone(),
                                    peer,
                                    endpoint.is_dialer(),
                                    conn,
                                )
                            },
                        ),
                    )
                })
                .map_err(|e| err(&e))?
            };
            b.with_behaviour(|k| build_behaviour(k, config, protocols))
                .map_err(|e| err(&e))?
                .with_swarm_config(idle)
                .build()
        }
        TransportKind::Memory => builder
            .with_other_transport(|k| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    libp2p::core::transport::MemoryTransport::default()
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise::Config::new(k)?)
                        .multiplex_ext(admit),
                )
            })
            .map_err(|e| err(&e))?
            .with_behaviour(|k| build_behaviour(k, config, protocols))
            .map_err(|e| err(&e))?
            .with_swarm_config(idle)
            .build(),
    };
    Ok(swarm)
}

/// Starts the network task on the current tokio runtime.
pub async fn start(key: identity::Keypair, config: NetConfig) -> Result<NetHandle, NetError> {
    let link_stall = config.link_stall;
    let config_state_dir = config.state_dir.clone();
    let protocols = Protocols::for_mesh(&config.mesh)?;
    let code_protocol = protocols.code.clone();
    let ctl_protocol = protocols.ctl.clone();
    let obj_protocol = protocols.obj.clone();
    let events: link::EventSink = Default::default();
    let code_policy = Arc::new(config.code_policy.clone());
    let labels = config.labels.clone();
    let (code_shipping, code_cache_dir, code_cache_bytes) = (
        config.code_shipping,
        config.code_cache.clone(),
        config.code_cache_bytes,
    );
    let peer_id = key.public().to_peer_id();
    let servable = code::Servable::default();
    // Without a configured cache, one per process in the temporary directory: removed when
    // the network stops, and at the next start if its process died first.
    let temp_cache = code_cache_dir.is_none().then(|| {
        remove_dead_temp_caches();
        std::env::temp_dir().join(format!(
            "{TEMP_CACHE_PREFIX}{}-{peer_id}",
            std::process::id()
        ))
    });
    let cache_dir = code_cache_dir
        .or_else(|| temp_cache.clone())
        .unwrap_or_default();
    let code_cache = code::BinaryCache::open(&cache_dir, code_cache_bytes)
        .map_err(|e| NetError::Swarm(format!("code cache {}: {e}", cache_dir.display())))?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| NetError::Swarm(format!("the network needs a tokio runtime: {e}")))?;
    let tasks = Tasks::new(runtime);
    let credential = config
        .admission
        .credential(&peer_id, admission::unix_now())
        .map_err(|e| NetError::Admission(e.to_string()))?;
    let gate = admission::Gate::new(config.admission.trust.clone(), credential);
    // Revocations and grants known from earlier runs apply before anyone connects.
    if let Some(dir) = &config.state_dir {
        for statement in read_statements(&dir.join(REVOCATIONS_FILE)) {
            let applied = match &statement {
                Statement::Revocation(r) => gate.revoke(r).map(|_| ()),
                Statement::Publisher(g) => gate.grant_publisher(g).map(|_| ()),
            };
            if let Err(e) = applied {
                tracing::warn!(error = %e, "a stored statement of the authority was refused");
            }
        }
    }
    let mut swarm = build_swarm(key, &config, &protocols, &tasks, &gate)?;
    let topic = IdentTopic::new(protocols.load_topic.clone());
    let admin_topic = IdentTopic::new(protocols.admin_topic.clone());
    // Under SWIM loads are sampled (first hand, through membership): no topic of reports.
    let topics: &[(&IdentTopic, &str)] = if config.swim.is_some() {
        &[(&admin_topic, "membership notices")]
    } else {
        &[
            (&topic, "load reports"),
            (&admin_topic, "membership notices"),
        ]
    };
    for (t, what) in topics.iter().copied() {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| NetError::Swarm(format!("subscribing to {what}: {e}")))?;
    }
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Swarm(format!("listening on {addr}: {e}")))?;
        listeners.push(id);
    }
    for addr in &config.peers {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            let mut plain = addr.clone();
            plain.pop();
            swarm.behaviour_mut().kad.add_address(&peer, plain);
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let mut streams = swarm.behaviour().stream.new_control();
    let accept = |control: &mut libp2p_stream::Control, protocol: StreamProtocol| {
        control
            .accept(protocol.clone())
            .map_err(|e| NetError::Swarm(format!("accepting {protocol}: {e}")))
    };
    let code_incoming = accept(&mut streams, code_protocol.clone())?;
    let ctl_incoming = accept(&mut streams, ctl_protocol.clone())?;
    let swim_incoming = match config.swim {
        Some(_) => Some(accept(&mut streams, protocols.swim.clone())?),
        None => None,
    };
    #[cfg(feature = "test-utils")]
    let bulk_incoming = accept(&mut streams, protocols.bulk.clone())?;
    let view = Arc::new(Mutex::new(MeshView {
        peer_id: peer_id.to_string(),
        mesh: config.mesh.clone(),
        ..Default::default()
    }));
    let (tx, rx) = mpsc::channel(COMMANDS);
    let (bad_tx, bad_rx) = mpsc::channel::<PeerId>(BAD_PEERS);
    // What each peer may cost in streams and buffered bytes, shared by every acceptor.
    let limits = limits::PeerLimits::default();
    let routes = lane::Routes::default();
    let lane_ip = match config.transport {
        TransportKind::Tcp if config.lane => lane::listen_ip(&config.listen),
        _ => None,
    };
    let lane = match lane_ip {
        Some(ip) => {
            match lane::Lane::bind(ip, config.lane_port, routes.clone(), tasks.accept_token()).await
            {
                Ok((lane, acceptor)) => {
                    tasks.spawn(acceptor.instrument(tracing::info_span!("lane", peer = %peer_id)));
                    Some(lane)
                }
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "no sealed lane: objects go on streams only");
                    None
                }
            }
        }
        None => None,
    };
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (swim_tx, swim_rx) = mpsc::channel(swim::INBOX);
    let swim_net = config.swim.clone().map(|c| {
        // The start time is the incarnation: a restarted node comes back above its last run.
        swim::SwimNet::new(
            peer_id,
            started_ms,
            c,
            streams.clone(),
            protocols.swim.clone(),
            tasks.clone(),
            Instant::now(),
        )
    });
    let samples_loads = swim_net.is_some();
    let mut membership_config = config.membership;
    if swim_net.is_some() {
        // SWIM alone decides who is gone: a closed connection only makes its peer the next
        // probed, and loads are sampled, so a peer's reports come now and then, not as a
        // heartbeat.
        membership_config.grace = Duration::MAX;
        membership_config.expiry = Duration::MAX;
    }
    if let (Some(incoming), Some(s)) = (swim_incoming, &swim_net) {
        tasks.spawn(
            swim::accept(
                incoming,
                swim_tx,
                bad_tx.clone(),
                s.counters(),
                limits.clone(),
                tasks.accept_token(),
            )
            .instrument(tracing::info_span!("swim", peer = %peer_id)),
        );
    }
    let task = NetTask {
        membership: Membership::new(membership_config),
        swim: swim_net,
        bad_peers: 0,
        config,
        swarm,
        listeners,
        topic,
        admin_topic,
        gate: gate.clone(),
        next_admission_check: Instant::now(),
        protocols,
        view: view.clone(),
        peer_id,
        started_ms,
        seq: 0,
        load: Load::default(),
        load_dirty: true,
        last_report: None,
        same_mesh: HashMap::new(),
        queries_put: HashMap::new(),
        queries_get: HashMap::new(),
        queries_providers: HashMap::new(),
        resource_queries: HashMap::new(),
        provided_resources: std::collections::BTreeSet::new(),
        #[cfg(feature = "test-utils")]
        requests: HashMap::new(),
        bootstrapped: false,
        gossip_out: 0,
        gossip_in: 0,
        next_redial: Instant::now() + Duration::from_millis(500),
        redial_backoff: Duration::from_millis(500),
        report_soon: false,
        events: events.clone(),
        tasks: tasks.clone(),
        routes: routes.clone(),
    };
    let span = tracing::info_span!("net", peer = %peer_id);
    tasks.spawn_swarm(task.run(rx, bad_rx, swim_rx).instrument(span.clone()));
    if let Some(dir) = config_state_dir {
        tasks.spawn(
            watch_state_dir(dir, peer_id, gate.clone(), tx.clone(), tasks.accept_token())
                .instrument(span.clone()),
        );
    }
    tasks.spawn(
        code_server(
            code_incoming,
            servable.clone(),
            code_shipping,
            limits.clone(),
            tasks.accept_token(),
        )
        .instrument(span.clone()),
    );
    tasks.spawn(
        link::accept(
            ctl_incoming,
            events.clone(),
            bad_tx.clone(),
            limits.clone(),
            tasks.accept_token(),
        )
        .instrument(span.clone()),
    );
    #[cfg(feature = "test-utils")]
    tasks.spawn(
        bulk_sink(bulk_incoming, bad_tx, limits.clone(), tasks.accept_token()).instrument(span),
    );
    let links = link::Links::new(
        streams.clone(),
        ctl_protocol,
        events.clone(),
        tasks.clone(),
        link_stall,
    );
    Ok(NetHandle {
        commands: tx,
        peer_id,
        view,
        streams,
        servable,
        code_cache: Arc::new(Mutex::new(code_cache)),
        transfers: progress::Transfers::default(),
        code_protocol,
        code_shipping,
        samples_loads,
        labels,
        code_policy,
        gate: gate.clone(),
        rejected: Arc::new(Mutex::new(lru::LruCache::new(REJECTIONS_LOGGED))),
        links,
        events,
        obj_protocol,
        lane,
        routes,
        limits,
        tasks,
        temp_cache,
    })
}

/// Prefix of the per-process code caches in the temporary directory.
const TEMP_CACHE_PREFIX: &str = "shoal-code-";

/// Removes this user's per-process code caches whose process is gone.
fn remove_dead_temp_caches() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_CACHE_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.uid() == me && m.is_dir());
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if ours && gone {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::debug!(path = %entry.path().display(), error = %e, "a dead process's code cache was not removed");
            }
        }
    }
}

/// The file in the state directory holding the authority's statements (revocations and
/// publisher grants), one per line.
pub const REVOCATIONS_FILE: &str = "revocations";
/// The file in the state directory holding this node's join token (its credential).
pub const CREDENTIAL_FILE: &str = "credential";
/// How often the state directory is looked at.
const STATE_POLL: Duration = Duration::from_secs(1);

/// Reads the authority's statements of `path` (a missing file has none; a bad line is
/// logged).
fn read_statements(path: &Path) -> Vec<Statement> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the authority's statements");
            return Vec::new();
        }
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| match Statement::from_text(l) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a bad line in the statements file");
                None
            }
        })
        .collect()
}

/// Picks up, while the node runs, a renewed credential and new revocations written into
/// `dir` (by `shoal mesh renew` and `shoal mesh publish`), until `stop`.
async fn watch_state_dir(
    dir: std::path::PathBuf,
    me: PeerId,
    gate: Arc<admission::Gate>,
    commands: mpsc::Sender<Command>,
    stop: tokio_util::sync::CancellationToken,
) {
    let cred_path = dir.join(CREDENTIAL_FILE);
    let rev_path = dir.join(REVOCATIONS_FILE);
    let mut last_token: Option<String> = std::fs::read_to_string(&cred_path).ok();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut last_revocations = None;
    let mut tick = tokio::time::interval(STATE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut out = Vec::new();
        let now_revocations = stamp(&rev_path);
        let statements = if now_revocations != last_revocations {
            last_revocations = now_revocations;
            read_statements(&rev_path)
        } else {
            Vec::new()
        };
        for statement in statements {
            match statement {
                Statement::Revocation(r) => {
                    if crate::auth::peer_key(&me).is_ok_and(|key| key == r.subject) {
                        tracing::error!("this node's own key has been revoked");
                    }
                    out.push(Command::Revoke(r));
                }
                Statement::Publisher(g) => out.push(Command::GrantPublisher(g)),
            }
        }
        match std::fs::read_to_string(&cred_path) {
            Ok(text) if last_token.as_deref() != Some(text.as_str()) => {
                match crate::auth::JoinToken::from_text(&text)
                    .and_then(|t| t.credential(&me, admission::unix_now()))
                {
                    Ok(cred) if cred != gate.own() => out.push(Command::Renew(cred)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %cred_path.display(), error = %e, "the new credential file is not usable")
                    }
                }
                last_token = Some(text);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %cred_path.display(), error = %e, "cannot read the credential file")
            }
        }
        for cmd in out {
            if commands.send(cmd).await.is_err() {
                return;
            }
        }
    }
}

/// Accepts bulk streams until `stop`: a `u64` length, then that many bytes, answered by the
/// `u64` count received. Measures raw stream throughput (tests and benchmarks).
#[cfg(feature = "test-utils")]
async fn bulk_sink(
    incoming: libp2p_stream::IncomingStreams,
    bad: mpsc::Sender<PeerId>,
    limits: limits::PeerLimits,
    stop: tokio_util::sync::CancellationToken,
) {
    let kind = limits::StreamKind::Bulk;
    tasks::serve_streams(incoming, stop, limits, kind, move |peer, stream, permit| {
        let bad = bad.clone();
        async move {
            let _counted = permit;
            match bulk::sink(stream).await {
                Ok(bytes) => tracing::debug!(%peer, bytes, "bulk transfer received"),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "bulk stream refused");
                    // A malformed header is not an accident: the peer goes.
                    if e.kind() == std::io::ErrorKind::InvalidData && bad.send(peer).await.is_err()
                    {
                        tracing::debug!(%peer, "not disconnected: the network task has stopped");
                    }
                }
            }
        }
    })
    .await;
}

/// Serves binaries to peers that fetch them, until `stop`.
async fn code_server(
    incoming: libp2p_stream::IncomingStreams,
    servable: code::Servable,
    enabled: bool,
    limits: limits::PeerLimits,
    stop: tokio_util::sync::CancellationToken,
) {
    let kind = limits::StreamKind::Code;
    tasks::serve_streams(incoming, stop, limits, kind, move |peer, stream, permit| {
        let servable = servable.clone();
        async move {
            let _counted = permit;
            if let Err(e) = code::serve(stream, peer, &servable, enabled).await {
                tracing::warn!(%peer, error = %e, "binary not served");
            }
        }
    })
    .await;
}

#[cfg(feature = "test-utils")]
pub mod bulk {
    //! The bulk stream protocol: a `u64` little-endian length (at most [`MAX_BULK`]), then
    //! the bytes; the receiver answers with the `u64` count it read.

    use futures::{AsyncReadExt, AsyncWriteExt};
    use std::io;
    use std::time::Duration;

    /// Longest bulk transfer accepted.
    pub const MAX_BULK: u64 = 1 << 40;
    /// A transfer that makes no progress for this long is dropped.
    pub const STALL: Duration = Duration::from_secs(30);

    /// Receives one transfer and acknowledges it.
    pub async fn sink(mut stream: libp2p::Stream) -> io::Result<u64> {
        let mut len = [0u8; 8];
        tokio::time::timeout(STALL, stream.read_exact(&mut len))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no header"))??;
        let len = u64::from_le_bytes(len);
        if len > MAX_BULK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("transfer of {len} bytes exceeds the maximum"),
            ));
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < len {
            let want = (len - got).min(buf.len() as u64) as usize;
            let n = tokio::time::timeout(STALL, stream.read(&mut buf[..want]))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "stalled"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated transfer",
                ));
            }
            got += n as u64;
        }
        stream.write_all(&got.to_le_bytes()).await?;
        stream.close().await?;
        Ok(got)
    }

    /// Sends `total` bytes (from `chunk`, repeated) and waits for the acknowledgement.
    pub async fn send(mut stream: libp2p::Stream, total: u64, chunk: &[u8]) -> io::Result<u64> {
        stream.write_all(&total.to_le_bytes()).await?;
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await?;
            sent += n as u64;
        }
        stream.flush().await?;
        let mut ack = [0u8; 8];
        tokio::time::timeout(STALL, stream.read_exact(&mut ack))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no acknowledgement"))??;
        Ok(u64::from_le_bytes(ack))
    }
}

struct NetTask {
    config: NetConfig,
    swarm: Swarm<Behaviour>,
    /// The listeners opened at start (closed first when the network stops).
    listeners: Vec<ListenerId>,
    topic: IdentTopic,
    /// Membership notices.
    admin_topic: IdentTopic,
    /// Admission: who is a member, revocations.
    gate: Arc<admission::Gate>,
    /// When expired credentials are next looked for.
    next_admission_check: Instant,
    protocols: Protocols,
    membership: Membership<PeerId>,
    /// Membership by SWIM, when configured: it decides who is gone.
    swim: Option<swim::SwimNet>,
    /// Times a peer was disconnected for sending malformed data.
    bad_peers: u64,
    view: Arc<Mutex<MeshView>>,
    peer_id: PeerId,
    started_ms: u64,
    seq: u64,
    load: Load,
    load_dirty: bool,
    last_report: Option<Instant>,
    /// Peers identify showed to be of this mesh, with an open connection.
    same_mesh: HashMap<PeerId, Vec<Multiaddr>>,
    queries_put: HashMap<QueryId, Reply<()>>,
    queries_get: HashMap<QueryId, Reply<Option<Vec<u8>>>>,
    queries_providers: HashMap<QueryId, (Vec<PeerId>, Reply<Vec<PeerId>>)>,
    /// Lookups of a resource's providers under way (loads are sampled), by resource.
    resource_queries: HashMap<QueryId, String>,
    /// Resources few peers have that this node announces in the DHT (loads are sampled).
    provided_resources: std::collections::BTreeSet<String>,
    #[cfg(feature = "test-utils")]
    requests: HashMap<request_response::OutboundRequestId, Reply<PeerResponse>>,
    bootstrapped: bool,
    gossip_out: u64,
    gossip_in: u64,
    next_redial: Instant,
    redial_backoff: Duration,
    /// A peer subscribed to the reports since the last one went out.
    report_soon: bool,
    /// Where reports and losses of peers go (the node).
    events: link::EventSink,
    /// The network's tasks (notices to the node run as such) and its stop signals.
    tasks: Tasks,
    /// Where peers' lanes are (the IPs of their connections).
    routes: lane::Routes,
}

/// Whether `peer` is kept apart from this node (a test hook).
#[cfg(feature = "test-utils")]
fn is_blocked(config: &NetConfig, peer: &PeerId) -> bool {
    config.blocked.contains(peer)
}

#[cfg(not(feature = "test-utils"))]
fn is_blocked(_: &NetConfig, _: &PeerId) -> bool {
    false
}

/// Answers a command. A requester that stopped waiting (its future was dropped) needs no
/// answer: that is not an error.
fn answer<T>(reply: Reply<T>, result: Result<T, NetError>, what: &'static str) {
    if reply.send(result).is_err() {
        tracing::debug!(
            command = what,
            "answer dropped: the requester stopped waiting"
        );
    }
}

impl NetTask {
    /// Runs until the network is shut down (or every handle is gone, which stops
    /// everything at once), then closes the listeners and connections and drops the swarm.
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut bad: mpsc::Receiver<PeerId>,
        mut swim_in: mpsc::Receiver<(PeerId, shoal_protocol::swim::SwimWire)>,
    ) {
        let stop = self.tasks.swarm_token();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // No timer at all without SWIM: this loop is the swarm's hot path.
            let swim_due = self.swim.as_ref().map(|s| s.next_deadline());
            let swim_timer = async move {
                match swim_due {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                ev = self.swarm.select_next_some() => self.swarm_event(ev),
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => {
                        tracing::debug!("every network handle is gone; stopping everything");
                        self.tasks.abort();
                        break;
                    }
                },
                Some(peer) = bad.recv() => {
                    tracing::warn!(%peer, "disconnecting a peer that sent malformed data");
                    self.bad_peers += 1;
                    self.disconnect(peer);
                }
                _ = tick.tick() => self.tick(),
                Some((peer, wire)) = swim_in.recv() => self.swim_message(peer, wire),
                () = swim_timer => {
                    if let Some(s) = self.swim.as_mut() {
                        s.tick(Instant::now());
                    }
                }
            }
            self.swim_pump();
        }
        self.close().await;
        tracing::debug!("network task stopped");
    }

    /// Stops listening and closes every connection, for at most [`tasks::CLOSE_GRACE`];
    /// whatever is still open then goes with the swarm.
    async fn close(&mut self) {
        self.swim_leave().await;
        for id in std::mem::take(&mut self.listeners) {
            if !self.swarm.remove_listener(id) {
                tracing::debug!(?id, "listener already closed");
            }
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            self.disconnect(peer);
        }
        let deadline = tokio::time::Instant::now() + tasks::CLOSE_GRACE;
        while self.swarm.network_info().num_peers() > 0 {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(ev) => self.swarm_event(ev),
                Err(_) => {
                    tracing::debug!(
                        peers = self.swarm.network_info().num_peers(),
                        "connections still open after the grace; dropping them"
                    );
                    break;
                }
            }
        }
    }

    /// Closes the connections to `peer`.
    fn disconnect(&mut self, peer: PeerId) {
        if self.swarm.disconnect_peer_id(peer).is_err() {
            tracing::debug!(%peer, "not connected; nothing to disconnect");
        }
    }

    /// Whether `peer` is kept apart from this one (a test hook).
    fn blocked(&self, peer: &PeerId) -> bool {
        is_blocked(&self.config, peer)
    }

    /// A membership message from `peer`.
    fn swim_message(&mut self, peer: PeerId, wire: shoal_protocol::swim::SwimWire) {
        if self.blocked(&peer) {
            return;
        }
        let Some(s) = self.swim.as_mut() else {
            return;
        };
        let now = Instant::now();
        match s.handle(now, peer, wire) {
            Ok(received) => {
                if let Some(report) = received.load {
                    if let Err(reason) = self.accept_report(peer, *report, now) {
                        tracing::warn!(%peer, %reason, "a load report refused; disconnecting the sender");
                        self.bad_peers += 1;
                        self.disconnect(peer);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "a malformed membership message; disconnecting the sender");
                self.bad_peers += 1;
                self.disconnect(peer);
            }
        }
    }

    /// Acts on membership's changes and sends its messages (dialling members that are not
    /// connected, at the addresses membership knows).
    fn swim_pump(&mut self) {
        let Some(s) = self.swim.as_mut() else {
            return;
        };
        let events = s.events();
        let swarm = &mut self.swarm;
        let blocked = &self.config;
        s.flush(|peer, addrs| {
            if swarm.is_connected(&peer) || addrs.is_empty() || is_blocked(blocked, &peer) {
                return;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial a member");
            }
        });
        for (peer, event) in events {
            use crate::core::swim::Event;
            match event {
                Event::Up(_) => tracing::info!(%peer, "member up"),
                Event::Suspected(_) => tracing::info!(%peer, "member suspected"),
                Event::Refuted(_) => tracing::info!(%peer, "member refuted its suspicion"),
                Event::Failed(_) | Event::Left(_) => {
                    let because = if matches!(event, Event::Failed(_)) {
                        "failed"
                    } else {
                        "left"
                    };
                    tracing::info!(%peer, because, "peer left the mesh");
                    self.membership.remove(&peer);
                    self.lost(peer);
                }
            }
        }
    }

    /// Tells a few members that this node leaves, and waits (at most
    /// [`SWIM_LEAVE_GRACE`], serving the swarm meanwhile) for those messages to go out.
    async fn swim_leave(&mut self) {
        let Some(s) = self.swim.as_mut() else {
            return;
        };
        s.leave();
        let sent = s.sent_all();
        self.swim_pump();
        let deadline = tokio::time::Instant::now() + SWIM_LEAVE_GRACE;
        tokio::pin!(sent);
        loop {
            tokio::select! {
                () = &mut sent => break,
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("leaving: not every member was told in time");
                    break;
                }
                ev = self.swarm.select_next_some() => self.swarm_event(ev),
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        for change in self.membership.tick(now) {
            if let Change::Left(peer, because) = change {
                tracing::info!(%peer, ?because, "peer left the mesh");
                self.lost(peer);
            }
        }
        let due = match self.last_report {
            None => true,
            Some(t) => {
                let since = now.saturating_duration_since(t);
                since >= self.config.report_interval
                    || (self.load_dirty && since >= self.config.report_min_interval)
                    // New listeners: one early report for a burst of them.
                    || (self.report_soon && since >= self.config.report_interval / 2)
            }
        };
        if self.swim.is_some() {
            // Sampled: the report goes with membership's messages. A new one (a new
            // sequence number) at least every report interval, as gossip would: a receiver
            // resets its estimate of this node's room on a new report (what it sent since,
            // what this node refused).
            let stale = self
                .last_report
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.report_interval);
            if self.load_dirty || stale {
                let report = self.report(now);
                if let Some(s) = self.swim.as_mut() {
                    s.set_load(report);
                }
                self.provide_resources();
            }
        } else if due {
            self.publish_report(now);
        }
        if now >= self.next_redial {
            self.redial(now);
        }
        if now >= self.next_admission_check {
            self.next_admission_check = now + Duration::from_secs(1);
            for peer in self.gate.expired(admission::unix_now()) {
                tracing::warn!(%peer, "a member's credential expired; disconnecting it");
                self.expel(peer);
            }
        }
        self.refresh_view(now);
    }

    /// Dials the bootstrap peers that are not connected (a restarted or partitioned peer
    /// comes back), with a growing interval while they stay away, up to
    /// [`NetTask::redial_cap`].
    fn redial(&mut self, now: Instant) {
        let mut dialed = false;
        for addr in self.config.peers.clone() {
            let connected = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => self.swarm.is_connected(&peer),
                _ => false,
            };
            if !connected {
                dialed = true;
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "redial failed");
                }
            }
        }
        self.redial_backoff = if dialed {
            (self.redial_backoff * 2).min(self.redial_cap())
        } else {
            Duration::from_millis(500)
        };
        self.next_redial = now + self.redial_backoff;
    }

    /// The longest wait between redials: half the failure timeout (at most 10 s), so that
    /// once a cut heals the peers see each other again within the failure timeout.
    fn redial_cap(&self) -> Duration {
        (self.config.membership.expiry / 2)
            .clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Announces in the DHT the resources few peers have that this node has (and withdraws
    /// those it no longer has), so that peers sampling loads find it.
    fn provide_resources(&mut self) {
        let now: std::collections::BTreeSet<String> = self
            .load
            .total
            .0
            .keys()
            .filter(|n| crate::core::indexed_resource(n))
            .cloned()
            .collect();
        let kad = &mut self.swarm.behaviour_mut().kad;
        for gone in self.provided_resources.difference(&now) {
            kad.stop_providing(&RecordKey::new(&shoal_protocol::mesh::resource_key(gone)));
        }
        for new in now.difference(&self.provided_resources) {
            let key = RecordKey::new(&shoal_protocol::mesh::resource_key(new));
            if let Err(e) = kad.start_providing(key) {
                tracing::warn!(resource = %new, error = %e, "cannot announce a resource in the DHT");
            }
        }
        self.provided_resources = now;
    }

    fn publish_report(&mut self, now: Instant) {
        let report = self.report(now);
        let bytes = match codec::encode(&report) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a load report");
                return;
            }
        };
        let len = bytes.len() as u64;
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => self.gossip_out += len,
            // Alone (or before anyone subscribed): nothing to do.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "load report not published"),
        }
    }

    /// This node's next load report.
    fn report(&mut self, now: Instant) -> LoadReport {
        self.seq += 1;
        // A client offers nothing (the others also disregard what a client offers).
        let client = self
            .gate
            .own()
            .chain
            .last()
            .is_some_and(|c| c.role == crate::auth::Role::Client);
        let addrs = self.listen_addrs();
        let report = LoadReport {
            peer: self.peer_id.to_bytes(),
            mesh: self.config.mesh.clone(),
            seq: self.seq,
            started_ms: self.started_ms,
            total: if client {
                Default::default()
            } else {
                self.load.total.clone()
            },
            free: if client {
                Default::default()
            } else {
                self.load.free.clone()
            },
            queued: self.load.queued,
            running: self.load.running,
            store_capacity: self.load.store_capacity,
            store_used: self.load.store_used,
            target: target(),
            binaries: self
                .load
                .binaries
                .iter()
                .take(shoal_protocol::mesh::MAX_REPORT_BINARIES)
                .copied()
                .collect(),
            addrs: addrs
                .into_iter()
                .take(shoal_protocol::mesh::MAX_REPORT_ADDRS)
                .collect(),
            accepts_code: self.config.code_shipping && !client,
            labels: if client {
                Vec::new()
            } else {
                self.config.labels.clone()
            },
        };
        self.last_report = Some(now);
        self.load_dirty = false;
        self.report_soon = false;
        report
    }

    fn listen_addrs(&self) -> Vec<String> {
        self.swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(self.peer_id)).to_string())
            .collect()
    }

    fn refresh_view(&self, now: Instant) {
        let peers = match &self.swim {
            Some(s) => self.swim_view(s, now),
            None => self.reports_view(now),
        };
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        v.listen_addrs = self.listen_addrs();
        v.peers = peers;
        v.gossip_bytes_out = self.gossip_out;
        v.gossip_bytes_in = self.gossip_in;
        v.swim = self.swim.as_ref().map(|s| s.status());
        v.bad_peers = self.bad_peers;
    }

    /// The peers under SWIM: the members up, each with the last load it sent this node (if
    /// one came: loads are sampled).
    fn swim_view(&self, s: &swim::SwimNet, now: Instant) -> Vec<PeerView> {
        s.members_up()
            .into_iter()
            .map(|id| {
                let m = self.membership.get(&id);
                let report = m.and_then(|m| m.report.clone());
                PeerView {
                    peer_id: id.to_string(),
                    addrs: report
                        .as_ref()
                        .map(|r| r.addrs.clone())
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| s.addrs_of(&id).iter().map(|a| a.to_string()).collect()),
                    report,
                    last_heard_ms: m.map_or(0, |m| {
                        now.saturating_duration_since(m.last_heard).as_millis() as u64
                    }),
                    rtt_us: m.and_then(|m| m.rtt).map(|d| d.as_micros() as u64),
                    connected: self.swarm.is_connected(&id),
                }
            })
            .collect()
    }

    /// The peers as their gossiped reports show them.
    fn reports_view(&self, now: Instant) -> Vec<PeerView> {
        // A peer shows once its first report arrived: before that nothing is known of it.
        self.membership
            .peers()
            .filter(|(_, m)| m.report.is_some())
            .map(|(id, m)| PeerView {
                peer_id: id.to_string(),
                addrs: m
                    .report
                    .as_ref()
                    .map(|r| r.addrs.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| m.addrs.clone()),
                report: m.report.clone(),
                last_heard_ms: now.saturating_duration_since(m.last_heard).as_millis() as u64,
                rtt_us: m.rtt.map(|d| d.as_micros() as u64),
                connected: m.connected,
            })
            .collect()
    }

    fn command(&mut self, cmd: Command) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match cmd {
            Command::Load(load) => {
                if load != self.load {
                    self.load = load;
                    self.load_dirty = true;
                }
            }
            Command::AskLoads(ask) => self.ask_loads(ask),
            #[cfg(feature = "test-utils")]
            Command::PublishRaw(bytes) => {
                let topic = self.topic.clone();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    tracing::debug!(error = %e, "raw report not published");
                }
            }
            Command::Revoke(r) => {
                self.revocation(r, None);
            }
            Command::GrantPublisher(g) => {
                self.publisher_grant(g, None);
            }
            Command::Renew(cred) => match self.gate.renew(&self.peer_id, cred.clone()) {
                Ok(m) => {
                    tracing::info!(not_after = m.not_after, "credential renewed");
                    self.publish_notice(&admission::Notice::Credential(cred));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewed credential refused; keeping the old one")
                }
            },
            Command::Forget(peer) => {
                if self.swarm.disconnect_peer_id(peer).is_ok() {
                    tracing::info!(%peer, "disconnected a peer this node considers lost");
                }
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "cannot dial");
                }
            }
            Command::PutRecord { key, value, reply } => {
                let record = kad::Record::new(RecordKey::new(&key), value);
                match kad.put_record(record, Quorum::One) {
                    Ok(id) => {
                        self.queries_put.insert(id, reply);
                    }
                    Err(e) => answer(reply, Err(NetError::Dht(e.to_string())), "put a record"),
                }
            }
            Command::GetRecord { key, reply } => {
                let id = kad.get_record(RecordKey::new(&key));
                self.queries_get.insert(id, reply);
            }
            Command::RemoveRecord { key } => kad.remove_record(&RecordKey::new(&key)),
            Command::StartProviding { key } => {
                if let Err(e) = kad.start_providing(RecordKey::new(&key)) {
                    tracing::warn!(error = %e, "cannot announce an object");
                }
            }
            Command::StopProviding { key } => kad.stop_providing(&RecordKey::new(&key)),
            Command::GetProviders { key, reply } => {
                let id = kad.get_providers(RecordKey::new(&key));
                self.queries_providers.insert(id, (Vec::new(), reply));
            }
            #[cfg(feature = "test-utils")]
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
                self.requests.insert(id, reply);
            }
        }
    }

    fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = Instant::now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if let Some(s) = self.swim.as_mut() {
                    s.set_own_addrs(self.swarm.listeners().cloned().collect());
                }
                self.refresh_view(now);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                if self.blocked(&peer_id) {
                    self.disconnect(peer_id);
                    return;
                }
                tracing::debug!(
                    %peer_id,
                    %connection_id,
                    addr = %endpoint.get_remote_address(),
                    dialer = endpoint.is_dialer(),
                    "connected"
                );
                self.routes
                    .connected(peer_id, endpoint.get_remote_address());
                if self.same_mesh.contains_key(&peer_id) {
                    self.membership.connected(
                        &peer_id,
                        Some(endpoint.get_remote_address().to_string()),
                        now,
                    );
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(
                    %peer_id,
                    %connection_id,
                    ?cause,
                    num_established,
                    "connection closed"
                );
                if num_established == 0 {
                    self.routes.disconnected(&peer_id);
                    self.same_mesh.remove(&peer_id);
                    self.membership.disconnected(&peer_id, now);
                    if let Some(s) = self.swim.as_mut() {
                        s.connection_lost(now, &peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(ev) => self.behaviour_event(ev, now),
            _ => {}
        }
    }

    fn behaviour_event(&mut self, ev: BehaviourEvent, now: Instant) {
        match ev {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != self.protocols.identify {
                    tracing::info!(%peer_id, theirs = %info.protocol_version, "a peer of another mesh; disconnecting");
                    self.disconnect(peer_id);
                    return;
                }
                if self.blocked(&peer_id) {
                    return;
                }
                for addr in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                let first = !self.same_mesh.contains_key(&peer_id);
                self.same_mesh.insert(peer_id, info.listen_addrs.clone());
                if let Some(s) = self.swim.as_mut() {
                    s.peer_addrs(&peer_id, &info.listen_addrs);
                    // A node alone joins through whoever it meets; later ones join through
                    // their bootstrap peers (a healed partition meets again that way).
                    let bootstrap =
                        self.config.peers.iter().any(
                            |a| matches!(a.iter().last(), Some(Protocol::P2p(p)) if p == peer_id),
                        );
                    if first && (s.alone() || bootstrap) {
                        s.join_through(&peer_id);
                    }
                }
                if first {
                    let addr = info.listen_addrs.first().map(|a| a.to_string());
                    if let Some(Change::Joined(p)) = self.membership.connected(&peer_id, addr, now)
                    {
                        tracing::info!(peer = %p, "peer joined the mesh");
                    }
                    if !self.bootstrapped {
                        self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                    }
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => match result {
                Ok(rtt) => self.membership.ping_ok(&peer, rtt, now),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "ping failed");
                    self.membership.ping_failed(&peer);
                }
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                if message.topic == self.admin_topic.hash() {
                    let acceptance = self.notice(message.source, &message.data);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            acceptance,
                        );
                    return;
                }
                self.gossip_in += message.data.len() as u64;
                if message.source.is_some_and(|s| self.gate.is_expelled(&s)) {
                    // Relayed by a peer that has not heard of the revocation yet: not its fault.
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                    return;
                }
                let verdict = self.load_report(message.source, &message.data, now);
                let acceptance = match verdict {
                    Ok(()) => MessageAcceptance::Accept,
                    Err(reason) => {
                        tracing::warn!(source = ?message.source, via = %propagation_source, %reason, "load report rejected; disconnecting the sender");
                        // Reports are validated before they are forwarded, so whoever sent
                        // us this one made it.
                        self.disconnect(propagation_source);
                        MessageAcceptance::Reject
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            // A new listener: report at once rather than at the next keep-alive (the first
            // report of a new peer went out before anyone listened).
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. }) => {
                self.report_soon = true;
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Kad(ev) => self.kad_event(ev),
            #[cfg(feature = "test-utils")]
            BehaviourEvent::Rpc(ev) => self.rpc_event(ev),
            #[cfg(not(feature = "test-utils"))]
            BehaviourEvent::Rpc(never) => match never {},
            BehaviourEvent::Stream(()) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if peer != self.peer_id
                        && !self.swarm.is_connected(&peer)
                        && !self.blocked(&peer)
                    {
                        tracing::debug!(%peer, %addr, "found by mDNS");
                        if let Err(e) = self.swarm.dial(addr.with(Protocol::P2p(peer))) {
                            tracing::debug!(%peer, error = %e, "cannot dial a peer found by mDNS");
                        }
                    }
                }
            }
            BehaviourEvent::Mdns(_) => {}
        }
    }

    /// Checks and applies a load report; `Err` says why it was refused.
    fn load_report(
        &mut self,
        source: Option<PeerId>,
        data: &[u8],
        now: Instant,
    ) -> Result<(), String> {
        let Some(source) = source else {
            return Err("unsigned".into());
        };
        let report: LoadReport =
            codec::decode(data, MAX_REPORT_BYTES).map_err(|e| e.to_string())?;
        self.accept_report(source, report, now)
    }

    /// Checks and applies a load report from `source` (it must be `source`'s own); `Err`
    /// says why it was refused.
    fn accept_report(
        &mut self,
        source: PeerId,
        mut report: LoadReport,
        now: Instant,
    ) -> Result<(), String> {
        report
            .validate(&source.to_bytes(), &self.config.mesh)
            .map_err(|e| e.to_string())?;
        if self
            .gate
            .member(&source)
            .is_some_and(|m| m.role == crate::auth::Role::Client)
        {
            // A client only submits: whatever it reports, it is given no work.
            report.total = Default::default();
            report.free = Default::default();
            report.accepts_code = false;
        }
        if source == self.peer_id || self.blocked(&source) {
            return Ok(());
        }
        if self.swim.as_ref().is_some_and(|s| s.is_down(&source)) {
            // Gone as membership sees it: a late report does not bring it back (a restarted
            // peer comes back through membership, with a later incarnation).
            return Ok(());
        }
        let copy = Box::new(report.clone());
        match self.membership.report(&source, report, now) {
            Some(Change::Joined(p)) => tracing::info!(peer = %p, "peer joined the mesh"),
            Some(Change::Restarted(p)) => {
                tracing::info!(peer = %p, "peer restarted");
                self.lost(p);
            }
            _ => {}
        }
        if let Some(tx) = self.events.get() {
            // Reports are soft state: one dropped under load is replaced by the next.
            let sent = tx.try_send(link::NetEvent::Report {
                peer: source,
                report: copy,
            });
            if !sent {
                tracing::debug!(peer = %source, "load report not delivered: the node is busy; the next one replaces it");
            }
        }
        Ok(())
    }

    /// A round of asking members for their loads: `ask.count` at random, and up to
    /// [`RESOURCE_PROVIDERS_ASKED`] providers of each resource in `ask.having` once the DHT
    /// has found them (one lookup per resource at a time).
    fn ask_loads(&mut self, ask: crate::core::LoadAsk) {
        let Some(s) = self.swim.as_mut() else {
            tracing::debug!("asked for loads, but this node hears every report");
            return;
        };
        let asked = s.ask_loads(ask.count, &ask.skip, &[]);
        tracing::trace!(asked, having = ?ask.having, "asking members for their loads");
        for name in ask.having {
            if self.resource_queries.values().any(|n| *n == name) {
                continue;
            }
            let key = RecordKey::new(&shoal_protocol::mesh::resource_key(&name));
            let id = self.swarm.behaviour_mut().kad.get_providers(key);
            self.resource_queries.insert(id, name);
        }
    }

    /// A peer that is no member any more: out of the view, disconnected, and the node told.
    fn expel(&mut self, peer: PeerId) {
        self.disconnect(peer);
        self.same_mesh.remove(&peer);
        if self.membership.remove(&peer) {
            self.lost(peer);
        }
    }

    /// Applies a revocation (from the state directory, or from gossip through `via`) and
    /// spreads it when it is new.
    fn revocation(&mut self, r: crate::auth::Revocation, via: Option<PeerId>) -> MessageAcceptance {
        match self.gate.revoke(&r) {
            Ok((true, gone)) => {
                tracing::info!(key = %crate::auth::hex(&r.subject), ?via, "revocation received");
                if via.is_none() {
                    self.publish_notice(&admission::Notice::Revocation(r.clone()));
                } else {
                    self.store_statement(&Statement::Revocation(r.clone()));
                }
                if let Ok(peer) = crate::auth::key_peer(&r.subject) {
                    if peer != self.peer_id && !gone.contains(&peer) {
                        self.expel(peer);
                    }
                }
                for peer in gone {
                    tracing::warn!(%peer, "a member was revoked; disconnecting it");
                    self.expel(peer);
                }
                MessageAcceptance::Accept
            }
            Ok((false, _)) => MessageAcceptance::Ignore,
            Err(e) => {
                tracing::warn!(?via, error = %e, "a revocation was refused");
                MessageAcceptance::Reject
            }
        }
    }

    /// Adopts a publisher grant (from the state directory, or from gossip through `via`)
    /// and spreads it when it is new.
    fn publisher_grant(
        &mut self,
        g: crate::auth::code::PublisherGrant,
        via: Option<PeerId>,
    ) -> MessageAcceptance {
        match self.gate.grant_publisher(&g) {
            Ok(true) => {
                tracing::info!(publisher = %crate::auth::hex(&g.publisher), expires = g.expires, ?via, "the authority names a publisher");
                if via.is_none() {
                    self.publish_notice(&admission::Notice::Publisher(g));
                } else {
                    self.store_statement(&Statement::Publisher(g));
                }
                MessageAcceptance::Accept
            }
            Ok(false) => MessageAcceptance::Ignore,
            Err(e) => {
                tracing::warn!(?via, error = %e, "a publisher grant was refused");
                MessageAcceptance::Reject
            }
        }
    }

    /// Keeps a statement of the authority learnt from the mesh for the next run.
    fn store_statement(&self, statement: &Statement) {
        let Some(dir) = &self.config.state_dir else {
            return;
        };
        use std::io::Write;
        let path = dir.join(REVOCATIONS_FILE);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{}", statement.to_text()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "a statement learnt from the mesh was not stored; peers tell it again on the next connection");
        }
    }

    /// A membership notice from gossip.
    fn notice(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        let notice = match admission::decode_notice(data) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(?source, error = %e, "a malformed membership notice");
                return MessageAcceptance::Reject;
            }
        };
        match notice {
            admission::Notice::Revocation(r) => self.revocation(r, source),
            admission::Notice::Publisher(g) => self.publisher_grant(g, source),
            admission::Notice::Credential(cred) => {
                let Some(source) = source else {
                    return MessageAcceptance::Reject;
                };
                match self.gate.renewed(&source, &cred) {
                    Ok(m) => {
                        tracing::debug!(peer = %source, not_after = m.not_after, "a member renewed its credential");
                        MessageAcceptance::Accept
                    }
                    Err(e) => {
                        tracing::warn!(peer = %source, error = %e, "a renewed credential was refused");
                        MessageAcceptance::Reject
                    }
                }
            }
        }
    }

    fn publish_notice(&mut self, notice: &admission::Notice) {
        let bytes = match codec::encode(notice) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a membership notice");
                return;
            }
        };
        let topic = self.admin_topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!("a membership notice with nobody to tell yet (peers learn it when they connect)");
            }
            Err(e) => tracing::warn!(error = %e, "membership notice not published"),
        }
    }

    /// Tells the node that `peer` is gone (what it ran for this node is lost).
    fn lost(&self, peer: PeerId) {
        let Some(tx) = self.events.get() else {
            tracing::debug!(%peer, "a peer was lost before the node listens; nobody to tell");
            return;
        };
        let tx = tx.clone();
        // Not waited for here: the network task never waits on the node.
        self.tasks.spawn(async move {
            if !tx.send(link::NetEvent::Lost { peer }).await {
                tracing::debug!(%peer, "a lost peer not reported: the node stopped listening");
            }
        });
    }

    fn kad_event(&mut self, ev: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = ev
        else {
            return;
        };
        match result {
            QueryResult::PutRecord(r) => {
                if let Some(reply) = self.queries_put.remove(&id) {
                    let result = r.map(|_| ()).map_err(|e| NetError::Dht(e.to_string()));
                    answer(reply, result, "put a record");
                }
            }
            QueryResult::GetRecord(r) => {
                let found = match r {
                    Ok(kad::GetRecordOk::FoundRecord(rec)) => Some(Ok(Some(rec.record.value))),
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => Some(Ok(None)),
                    Err(kad::GetRecordError::NotFound { .. }) => Some(Ok(None)),
                    Err(e) => Some(Err(NetError::Dht(e.to_string()))),
                };
                if let (Some(result), Some(reply)) = (found, self.queries_get.remove(&id)) {
                    answer(reply, result, "get a record");
                    // The first answer is enough.
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                }
            }
            QueryResult::GetProviders(r) if self.resource_queries.contains_key(&id) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &r {
                    let found: Vec<PeerId> = providers
                        .iter()
                        .copied()
                        .take(RESOURCE_PROVIDERS_ASKED)
                        .collect();
                    if let Some(s) = self.swim.as_mut() {
                        s.ask_loads(0, &[], &found);
                    }
                }
                if let Err(e) = &r {
                    tracing::debug!(error = %e, "resource provider lookup");
                }
                if step.last {
                    self.resource_queries.remove(&id);
                }
            }
            QueryResult::GetProviders(r) => {
                let done = step.last;
                if let Some((acc, _)) = self.queries_providers.get_mut(&id) {
                    match r {
                        Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                            acc.extend(providers)
                        }
                        Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                        Err(e) => tracing::debug!(error = %e, "provider lookup"),
                    }
                }
                if done {
                    if let Some((mut acc, reply)) = self.queries_providers.remove(&id) {
                        acc.sort();
                        acc.dedup();
                        answer(reply, Ok(acc), "get providers");
                    }
                }
            }
            QueryResult::Bootstrap(Err(e)) => tracing::debug!(error = %e, "kad bootstrap"),
            _ => {}
        }
    }

    #[cfg(feature = "test-utils")]
    fn rpc_event(&mut self, ev: request_response::Event<PeerRequest, PeerResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = match request {
                        PeerRequest::Ping { mesh } if mesh == self.config.mesh => {
                            PeerResponse::Pong {
                                mesh: self.config.mesh.clone(),
                            }
                        }
                        PeerRequest::Ping { mesh } => PeerResponse::Refused {
                            reason: format!(
                                "this peer is of mesh `{}`, not `{mesh}`",
                                self.config.mesh
                            ),
                        },
                    };
                    if self
                        .swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, response)
                        .is_err()
                    {
                        tracing::debug!(%peer, "response not sent: connection gone");
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.requests.remove(&request_id) {
                        answer(reply, Ok(response), "request");
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "request failed");
                if let Some(reply) = self.requests.remove(&request_id) {
                    let error = NetError::Request {
                        peer: peer.to_string(),
                        message: error.to_string(),
                    };
                    answer(reply, Err(error), "request");
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "bad request from a peer");
                // Garbage or an oversized frame (not a timeout or a closed connection): the
                // peer is dropped; everyone else carries on.
                if let request_response::InboundFailure::Io(e) = &error {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        tracing::warn!(%peer, "disconnecting a peer that sent a malformed request");
                        self.disconnect(peer);
                    }
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// The target triple this node was built for: the binaries it can run.
pub fn target() -> String {
    env!("SHOAL_TARGET").to_string()
}
