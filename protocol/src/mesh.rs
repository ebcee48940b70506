//! What peers of a mesh tell each other: load reports (gossip) and control requests
//! (request-response). Peer ids travel as their bytes; the network layer checks them.

use serde::{Deserialize, Serialize};

use crate::ids::{BinaryId, ObjectId, TaskId};
use crate::messages::{ActorInfo, ResourceSet, SharedObject, TaskError, TaskSpec};

/// Longest peer id accepted, in bytes (an ed25519 libp2p peer id is 38).
pub const MAX_PEER_KEY: usize = 48;

/// A peer of the mesh, as the node's core names it: the bytes of its libp2p `PeerId`,
/// held inline so that the key is `Copy` and the core needs no network types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    len: u8,
    bytes: [u8; MAX_PEER_KEY],
}

impl PeerKey {
    /// The key of a peer id given as bytes; `None` if they are empty or longer than
    /// [`MAX_PEER_KEY`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.is_empty() || b.len() > MAX_PEER_KEY {
            return None;
        }
        let mut bytes = [0u8; MAX_PEER_KEY];
        bytes[..b.len()].copy_from_slice(b);
        Some(Self {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The peer id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The peer id's bytes, owned (as they travel in messages).
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

/// The Base58 (Bitcoin) alphabet, in which libp2p prints peer ids.
const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

impl PeerKey {
    /// The key of a peer id as libp2p prints it (Base58); `None` if it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let zeros = s.bytes().take_while(|b| *b == b'1').count();
        // Bytes, least significant first.
        let mut bytes: Vec<u8> = Vec::with_capacity(s.len());
        for c in s.bytes().skip(zeros) {
            let mut carry = BASE58.iter().position(|a| *a == c)? as u32;
            for b in bytes.iter_mut() {
                carry += (*b as u32) * 58;
                *b = (carry & 0xff) as u8;
                carry >>= 8;
            }
            while carry > 0 {
                bytes.push((carry & 0xff) as u8);
                carry >>= 8;
            }
            if zeros + bytes.len() > MAX_PEER_KEY {
                return None;
            }
        }
        let mut out = vec![0u8; zeros];
        out.extend(bytes.iter().rev());
        Self::from_bytes(&out)
    }
}

/// Base58 (Bitcoin alphabet), as libp2p prints peer ids.
impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const ALPHABET: &[u8; 58] = BASE58;
        let input = self.as_bytes();
        let zeros = input.iter().take_while(|b| **b == 0).count();
        // Digits in base 58, least significant first.
        let mut digits: Vec<u8> = Vec::with_capacity(input.len() * 138 / 100 + 1);
        for &byte in &input[zeros..] {
            let mut carry = byte as u32;
            for d in digits.iter_mut() {
                carry += (*d as u32) << 8;
                *d = (carry % 58) as u8;
                carry /= 58;
            }
            while carry > 0 {
                digits.push((carry % 58) as u8);
                carry /= 58;
            }
        }
        let mut out = String::with_capacity(zeros + digits.len());
        out.extend(std::iter::repeat_n('1', zeros));
        out.extend(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char));
        f.write_str(&out)
    }
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKey({self})")
    }
}

/// Largest encoded load report accepted (gossip payloads stay far below gossipsub's 64 KiB).
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Binaries listed in one report at most.
pub const MAX_REPORT_BINARIES: usize = 256;
/// Addresses listed in one report at most.
pub const MAX_REPORT_ADDRS: usize = 16;
/// Longest address, mesh name, target triple, label or resource name accepted in a report.
pub const MAX_REPORT_STRING: usize = 256;
/// Labels in one report at most.
pub const MAX_REPORT_LABELS: usize = 64;

/// A peer's load, published on change (rate-limited) and at a keep-alive interval. Soft
/// state: a receiver forgets a peer whose reports stop.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The publishing peer's id (bytes of its libp2p `PeerId`): must be the message's
    /// signed source.
    pub peer: Vec<u8>,
    /// The mesh it belongs to.
    pub mesh: String,
    /// Increases with every report of one run of the peer; a report not newer than the last
    /// one seen is stale.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the peer started (a restart starts a new
    /// sequence).
    pub started_ms: u64,
    /// Everything the peer has.
    pub total: ResourceSet,
    /// What is free now.
    pub free: ResourceSet,
    /// Tasks waiting at the peer.
    pub queued: u64,
    /// Tasks running at the peer.
    pub running: u64,
    /// Its object store's capacity in bytes.
    pub store_capacity: u64,
    /// Bytes in use.
    pub store_used: u64,
    /// Its target triple (what binaries it can run).
    pub target: String,
    /// Binaries it holds (can start workers from).
    pub binaries: Vec<BinaryId>,
    /// Addresses it listens on.
    pub addrs: Vec<String>,
    /// Whether it takes binaries it does not hold (code shipping).
    pub accepts_code: bool,
    /// Its labels (`--label key=value`), which label selectors of tasks and actors match.
    pub labels: Vec<(String, String)>,
}

/// Why a load report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The report claims another peer than the one that signed it.
    #[error("report claims to be from another peer than its signer")]
    Forged,
    /// The report is from another mesh.
    #[error("report from mesh `{0}`")]
    OtherMesh(String),
    /// Out of range or too large.
    #[error("malformed report: {0}")]
    Malformed(String),
}

impl LoadReport {
    /// Checks a report received from `source` (its signed author) for mesh `mesh`.
    pub fn validate(&self, source: &[u8], mesh: &str) -> Result<(), ReportError> {
        if self.peer != source {
            return Err(ReportError::Forged);
        }
        if self.mesh != mesh {
            return Err(ReportError::OtherMesh(self.mesh.clone()));
        }
        let bad = |m: String| Err(ReportError::Malformed(m));
        if self.binaries.len() > MAX_REPORT_BINARIES {
            return bad(format!("{} binaries", self.binaries.len()));
        }
        if self.addrs.len() > MAX_REPORT_ADDRS {
            return bad(format!("{} addresses", self.addrs.len()));
        }
        if self.target.len() > MAX_REPORT_STRING
            || self.addrs.iter().any(|a| a.len() > MAX_REPORT_STRING)
        {
            return bad("an overlong string".into());
        }
        if self.total.0.len() > 64 || self.free.0.len() > 64 {
            return bad("too many resources".into());
        }
        if self.labels.len() > MAX_REPORT_LABELS {
            return bad(format!("{} labels", self.labels.len()));
        }
        let long = |s: &String| s.len() > MAX_REPORT_STRING;
        if self.labels.iter().any(|(k, v)| long(k) || long(v))
            || self.total.0.keys().chain(self.free.0.keys()).any(long)
        {
            return bad("an overlong label or resource name".into());
        }
        for (name, free) in &self.free.0 {
            if *free > self.total.get_milli(name) {
                return bad(format!("{name}: more free than total"));
            }
        }
        if self.store_used > self.store_capacity.saturating_mul(2) {
            return bad("store use far above capacity".into());
        }
        Ok(())
    }
}

/// Where an actor lives: the value of its DHT record (key [`actor_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorLocation {
    /// The hosting peer's id (bytes).
    pub peer: Vec<u8>,
    /// Restarts so far.
    pub incarnation: u32,
    /// Its placement epoch: how many times its creator placed it before this placement
    /// (see [`RemoteTask::actor_epoch`]).
    pub epoch: u32,
    /// Its class.
    pub class: String,
    /// The process that created it.
    pub owner: crate::ids::ClientId,
}

/// The DHT key of an actor's location record.
pub fn actor_key(actor: &crate::ids::ActorId) -> Vec<u8> {
    let mut k = b"shoal/actor/".to_vec();
    k.extend_from_slice(&actor.0);
    k
}

/// The DHT key of a named actor's record (its value is the encoded [`crate::ids::ActorId`]).
pub fn name_key(name: &str) -> Vec<u8> {
    let mut k = b"shoal/name/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The DHT key under which peers that have a resource (one of those few peers have: not
/// CPUs or memory) announce themselves as providers, so that a peer that samples loads
/// finds them without asking everyone.
pub fn resource_key(name: &str) -> Vec<u8> {
    let mut k = b"shoal/resource/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The DHT key under which holders of an object announce themselves as providers.
pub fn object_key(object: &crate::ids::ObjectId) -> Vec<u8> {
    let mut k = b"shoal/object/".to_vec();
    k.extend_from_slice(&object.0);
    k
}

/// A control request from one peer to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Are you there, and of my mesh?
    Ping {
        /// The asker's mesh.
        mesh: String,
    },
}

/// The answer to a [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Here, of this mesh.
    Pong {
        /// The answerer's mesh.
        mesh: String,
    },
    /// The request was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Largest control message between peers (a task spec with its inline arguments).
pub const MAX_PEER_MSG: usize = 64 << 20;

/// A control message between peers, sent in order over one long-lived stream per direction
/// (so one caller's actor calls keep their order from peer to peer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Run this task for me (the sender owns its result).
    Submit(Box<RemoteTask>),
    /// The task cannot run here now (stale view, no room, cannot run the binary): the
    /// sender places it elsewhere.
    Refuse {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// A [`PeerMsg::Refuse`] because this peer's code policy rejected the task's binary as
    /// it came (unsigned, a bad manifest, an untrusted publisher): the sender places it on
    /// another peer, or fails it with [`TaskError::CodeRejected`] when none can take it. Its
    /// other tasks of the same binary are not sent here again for a while.
    CodeRejected {
        /// The task.
        task: TaskId,
        /// Why (the policy's words).
        reason: String,
    },
    /// An object the receiver asked for with [`PeerMsg::Fetch`], or the result of a task it
    /// submitted (the task's return object).
    Object {
        /// The object.
        id: ObjectId,
        /// Its value.
        value: RemoteValue,
        /// The refs inside the value that the sender lends the receiver (see
        /// [`RemoteTask::lent`]).
        lent: Vec<ObjectId>,
    },
    /// Send me object `id` once it is ready (answered by [`PeerMsg::Object`]).
    Fetch {
        /// The object.
        id: ObjectId,
    },
    /// The sender no longer needs these objects held for it: copies kept for it, or refs
    /// it was lent ([`RemoteTask::lent`]) and no longer holds.
    Release {
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// End an actor hosted by the receiver (`shoal::kill`, or its creator went away).
    Kill {
        /// The actor.
        actor: crate::ids::ActorId,
        /// Killed for good, even with restarts left.
        no_restart: bool,
        /// Let the calls already made finish first (its handles are all gone).
        drain: bool,
        /// Why, for its callers.
        reason: String,
        /// Its handles' secret: without it the kill is refused.
        token: crate::ids::ActorToken,
        /// Where the actor lives now (a peer id's bytes), when this copy ends because the
        /// node that placed it lost this one and placed it again there: calls made here go
        /// there from now on.
        moved_to: Option<Vec<u8>>,
    },
    /// Which actor has this name here? (answered by [`PeerMsg::ActorFound`])
    LookupActor {
        /// Request number.
        request: u64,
        /// The name.
        name: String,
    },
    /// The sender gave refs of these objects to peer `to` (in a task or a value it sent
    /// there, naming the receiver as a holder): let `to` read them here. Taken only from a
    /// peer that may read them itself.
    Grant {
        /// The peer given the refs (id as bytes).
        to: Vec<u8>,
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// Answer to [`PeerMsg::LookupActor`].
    ActorFound {
        /// Request number.
        request: u64,
        /// The actor, if a live one has the name here.
        actor: Option<ActorInfo>,
        /// The actor's handle object, lent to the asker (see [`RemoteTask::lent`]) when the
        /// sender counts the actor's handles (its creator is there): the handle the asker
        /// builds is counted. `None`: see `counted_at`.
        held: Option<ObjectId>,
        /// With `held` `None`: the peer that counts the actor's handles (id as bytes), when
        /// that is not the sender (the actor was placed at the sender by its creator's
        /// node): the asker asks it for a counted handle ([`PeerMsg::LendHandle`]). `None`
        /// too: its handles are not counted (it is detached), and it lives until killed.
        counted_at: Option<Vec<u8>>,
    },
    /// Lend the sender `actor`'s handle object: it found the actor by name at the peer that
    /// hosts it, which named the receiver as the node that counts its handles. Answered by
    /// [`PeerMsg::HandleLent`]; taken only with the handles' secret.
    LendHandle {
        /// Request number.
        request: u64,
        /// The actor.
        actor: crate::ids::ActorId,
        /// Its handles' secret, as the lookup gave it.
        token: crate::ids::ActorToken,
    },
    /// Answer to [`PeerMsg::LendHandle`]: the handle object, lent to the asker (see
    /// [`RemoteTask::lent`]); `None` if the actor's handles are no longer counted here (its
    /// last one went: it is ending).
    HandleLent {
        /// Request number.
        request: u64,
        /// The handle object.
        held: Option<ObjectId>,
    },
    /// Lines written by tasks or actors of the receiver's process `owner` that ran at the
    /// sender.
    Log {
        /// The process that submitted them.
        owner: crate::ids::ClientId,
        /// The lines.
        lines: Vec<crate::state::LogLine>,
    },
    /// What do you hold? (`shoal list|summary|get` asked at the sender; answered by
    /// [`PeerMsg::StateAnswer`]).
    StateQuery {
        /// The sender's number for the question.
        query: u64,
        /// The question.
        q: crate::state::StateQuery,
    },
    /// Cancel a task the sender submitted to the receiver (see [`crate::ToNode::Cancel`]):
    /// the receiver answers with the task's result as usual, [`TaskError::Cancelled`] if it
    /// did not finish first. Taken only from the task's owner.
    Cancel {
        /// The task.
        task: TaskId,
        /// End the worker process running it.
        force: bool,
        /// Also cancel the tasks it submitted.
        recursive: bool,
    },
    /// Item `index` of the streaming generator `task`, which the receiver sent the sender to
    /// run: the receiver owns it from now on (a large one stays at the sender until the
    /// receiver releases it). Items come in order; one sent again by another run is
    /// dropped. Taken only from the peer the task was sent to.
    StreamItem {
        /// The task.
        task: TaskId,
        /// The item's number, from 1.
        index: u32,
        /// Its value.
        value: RemoteValue,
        /// The refs inside the value that the sender lends the receiver (see
        /// [`RemoteTask::lent`]).
        lent: Vec<ObjectId>,
    },
    /// The owner of the streaming generator `task` took its items up to `taken`: the peer
    /// running it may let it run further (see [`crate::ToNode::StreamTaken`]). Taken only
    /// from the task's owner.
    StreamTaken {
        /// The task.
        task: TaskId,
        /// Items taken.
        taken: u32,
    },
    /// Answer to [`PeerMsg::StateQuery`]: the rows of what the sender holds, or why not.
    StateAnswer {
        /// The asker's number.
        query: u64,
        /// The answer.
        answer: Result<Box<crate::state::StateAnswer>, crate::state::StateError>,
    },
    /// First phase of placing a placement group the sender placed: set aside these bundles
    /// (index, what it reserves) for it, all or none, and say so with
    /// [`PeerMsg::GroupPrepared`]. They are not offered to anyone until
    /// [`PeerMsg::GroupCommit`].
    GroupPrepare {
        /// The group.
        group: crate::GroupId,
        /// Its bundles to hold here.
        bundles: Vec<(u32, crate::ResourceSet)>,
    },
    /// Answer to [`PeerMsg::GroupPrepare`].
    GroupPrepared {
        /// The group.
        group: crate::GroupId,
        /// Whether the bundles are set aside (else there was no room).
        ok: bool,
    },
    /// Second phase: offer the bundles set aside for `group` to its tasks and actors.
    GroupCommit {
        /// The group.
        group: crate::GroupId,
    },
    /// Free what is held here for `group` (its removal, or an aborted placement): the
    /// tasks and actors using it end. Taken only from the peer that placed the group.
    GroupRelease {
        /// The group.
        group: crate::GroupId,
        /// Why (empty: its creator removed it).
        reason: String,
        /// Only the bundles set aside and not committed (a placement aborted): those
        /// committed before stay.
        aborted: bool,
    },
    /// Remove `group`, which the receiver placed, for a holder of its handle at the
    /// sender's node (checked against the secret its handles carry).
    GroupRemove {
        /// The group.
        group: crate::GroupId,
        /// The secret of its handles.
        token: [u8; 16],
    },
}

/// A task sent to another peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteTask {
    /// The task.
    pub spec: TaskSpec,
    /// How many times it was spilled (the receiver never sends it on past the bound).
    pub hops: u32,
    /// The target triple its binary was built for.
    pub target: String,
    /// Where each of its `Arg::Ref` arguments and nested refs can be fetched: peers (ids as
    /// bytes) that hold a copy, the sender first.
    pub locations: Vec<(ObjectId, Vec<Vec<u8>>)>,
    /// The peer (id as bytes) that owns each of those refs, where the sender knows it: the
    /// peer whose process made it. When that peer dies, a ref of it whose value no live
    /// peer holds fails with [`crate::TaskError::OwnerDied`].
    pub owners: Vec<(ObjectId, Vec<u8>)>,
    /// For an actor's creation, its placement epoch: 0 the first time its creator places
    /// it, one more each time it places it again (its peer lost). For an actor's call, the
    /// epoch of the actor's newest incarnation its sender knows. A host whose copy is older
    /// than a call's epoch answers [`crate::TaskError::ActorMoved`] and ends the copy: two
    /// incarnations never both take calls that know of the newer one.
    pub actor_epoch: u32,
    /// The refs the task carries inside its arguments (`spec.nested`) that the sender lends
    /// the receiver: the sender counts the receiver as one holder of each until the
    /// receiver says [`PeerMsg::Release`], which it does once nothing there holds the ref
    /// any more (or at once, if it keeps the object alive by other means). This is how a
    /// ref that went to another peer (an actor's handle kept in a state there, say) keeps
    /// its object, and an actor its life, wherever the ref went: every peer a ref passes
    /// through holds it at the peer it came from, so an object lives while any copy of its
    /// ref does, in any process of the mesh.
    pub lent: Vec<ObjectId>,
}

impl PeerMsg {
    /// [`PeerMsg::Object`] with no refs lent yet (the sender's core lends those the value
    /// holds as it sends it).
    ///
    /// ```
    /// use shoal_protocol::mesh::{PeerMsg, RemoteValue};
    /// use shoal_protocol::ObjectId;
    ///
    /// let id = ObjectId::for_content(b"x");
    /// let msg = PeerMsg::object(id, RemoteValue::Inline(b"x".to_vec()));
    /// assert!(matches!(msg, PeerMsg::Object { lent, .. } if lent.is_empty()));
    /// ```
    pub fn object(id: ObjectId, value: RemoteValue) -> Self {
        PeerMsg::Object {
            id,
            value,
            lent: Vec::new(),
        }
    }
}

/// An object's value as it travels between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteValue {
    /// Small: the encoded bytes.
    Inline(Vec<u8>),
    /// Large: stays in the stores of these peers (ids as bytes); pull it from them.
    Shared {
        /// Size and digest (always given: a value without its digest is refused, for every
        /// copy is checked against it).
        object: SharedObject,
        /// Who holds a copy.
        holders: Vec<Vec<u8>>,
    },
    /// The task failed, or the object is gone.
    Error(TaskError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> LoadReport {
        LoadReport {
            peer: vec![1, 2, 3],
            mesh: "m".into(),
            seq: 1,
            started_ms: 5,
            total: ResourceSet::cpus(2.0),
            free: ResourceSet::cpus(1.0),
            queued: 0,
            running: 1,
            store_capacity: 100,
            store_used: 10,
            target: "x86_64-unknown-linux-gnu".into(),
            binaries: vec![],
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            accepts_code: true,
            labels: vec![("zone".into(), "a".into())],
        }
    }

    #[test]
    fn peer_keys_print_as_base58() {
        // Known vectors of base58 (Bitcoin alphabet).
        for b in [
            &b"Hello World!"[..],
            &[0, 0, 1],
            &[0],
            &[255; MAX_PEER_KEY],
            &[7; 38],
        ] {
            let k = PeerKey::from_bytes(b).unwrap();
            assert_eq!(PeerKey::parse(&k.to_string()), Some(k), "{k}");
        }
        assert_eq!(PeerKey::parse("0OIl"), None, "not Base58");
        assert_eq!(PeerKey::parse(""), None);
        assert_eq!(PeerKey::parse(&"z".repeat(80)), None, "too long");
        let k = PeerKey::from_bytes(b"Hello World!").unwrap();
        assert_eq!(k.to_string(), "2NEpo7TZRRrLZSi2U");
        let k = PeerKey::from_bytes(&[0, 0, 1]).unwrap();
        assert_eq!(k.to_string(), "112");
        assert_eq!(k.as_bytes(), &[0, 0, 1]);
        assert!(PeerKey::from_bytes(&[]).is_none());
        assert!(PeerKey::from_bytes(&[1; MAX_PEER_KEY + 1]).is_none());
    }

    #[test]
    fn validation() {
        let r = report();
        assert_eq!(r.validate(&[1, 2, 3], "m"), Ok(()));
        assert_eq!(r.validate(&[9], "m"), Err(ReportError::Forged));
        assert!(matches!(
            r.validate(&[1, 2, 3], "n"),
            Err(ReportError::OtherMesh(_))
        ));
        let mut bad = report();
        bad.free = ResourceSet::cpus(3.0);
        assert!(matches!(
            bad.validate(&[1, 2, 3], "m"),
            Err(ReportError::Malformed(_))
        ));
        let mut bad = report();
        bad.addrs = vec!["a".repeat(1000)];
        assert!(matches!(
            bad.validate(&[1, 2, 3], "m"),
            Err(ReportError::Malformed(_))
        ));
    }
}
