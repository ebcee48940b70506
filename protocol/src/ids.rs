//! Identifiers. All are plain byte arrays or integers, cheap to copy, hash and compare.

use std::fmt;

use serde::{Deserialize, Serialize};

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Parses lowercase or uppercase hex into exactly `N` bytes.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The id as lowercase hex.
            ///
            /// ```
            /// # use shoal_protocol as shoal;
            /// // The same for every id type: ObjectId, TaskId, ActorId, GroupId, NodeId.
            /// let group = shoal::GroupId([0xab; 16]);
            /// assert_eq!(group.to_hex(), "ab".repeat(16));
            /// assert_eq!(group.to_hex(), group.to_string());
            /// ```
            pub fn to_hex(&self) -> String {
                self.to_string()
            }
            /// Parses the hex form written by [`Self::to_hex`].
            ///
            /// ```
            /// # use shoal_protocol as shoal;
            /// use shoal::{ActorId, ObjectId};
            /// // The same for every id type: an id kept as text, say.
            /// let object = ObjectId::for_content(b"hello");
            /// assert_eq!(ObjectId::from_hex(&object.to_hex()), Some(object));
            /// assert_eq!(ActorId::from_hex("not hex"), None);
            /// assert_eq!(ActorId::from_hex(&object.to_hex()), None); // 32 bytes, not 16
            /// ```
            pub fn from_hex(s: &str) -> Option<Self> {
                parse_hex::<$len>(s).map(Self)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                hex(&self.0[..6], f)?;
                write!(f, "..)")
            }
        }
    };
}

byte_id!(
    /// An object: content-addressed (`put`) or derived from the task that returns it.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ObjectId;
    /// // Equal bytes, equal ids: what makes equal puts share one copy.
    /// assert_eq!(ObjectId::for_content(b"abc"), ObjectId::for_content(b"abc"));
    /// assert_ne!(ObjectId::for_content(b"abc"), ObjectId::for_content(b"abd"));
    /// ```
    ObjectId,
    32
);
byte_id!(
    /// The blake3 digest of an object's encoded bytes.
    Digest,
    32
);
byte_id!(
    /// An executable: the blake3 hash of its bytes. Workers are started from it.
    BinaryId,
    32
);
byte_id!(
    /// A task: a tag derived from the submitting process's secret and its counter, then the
    /// counter ([`TaskId::keyed`]), so ids never repeat and cannot be predicted.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::{ObjectId, TaskId};
    /// // A task's results are objects whose ids derive from its id.
    /// fn first_result(task: TaskId) -> ObjectId {
    ///     ObjectId::for_return(task, 0)
    /// }
    /// let task = TaskId([1; 16]);
    /// assert_eq!(first_result(task), ObjectId::for_return(task, 0));
    /// ```
    TaskId,
    16
);
byte_id!(
    /// An actor.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use std::collections::HashMap;
    /// // Ids are small `Copy` keys: calls counted per actor, say.
    /// let mut calls: HashMap<shoal::ActorId, u64> = HashMap::new();
    /// let actor = shoal::ActorId([3; 16]);
    /// *calls.entry(actor).or_default() += 1;
    /// assert_eq!(calls[&actor], 1);
    /// ```
    ActorId,
    16
);

byte_id!(
    /// A placement group: 16 random bytes made by its creator (knowing it is what lets a
    /// program schedule into the group or remove it).
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::{GroupId, ObjectId};
    /// // The ref `PlacementGroup::ready` gives is the object derived from the group's id.
    /// let group = GroupId([9; 16]);
    /// assert_eq!(ObjectId::for_group(group), ObjectId::for_group(GroupId([9; 16])));
    /// ```
    GroupId,
    16
);
byte_id!(
    /// A node. Random per node start for now; the mesh makes it the libp2p peer id.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// let node = shoal::NodeId([0x5a; 16]);
    /// println!("node {node}"); // lowercase hex, as `shoal status` writes it
    /// assert_eq!(format!("{node:?}"), "NodeId(5a5a5a5a5a5a..)");
    /// ```
    NodeId,
    16
);

/// A process attached to a node (driver or worker): random per process, the owner of the
/// objects it creates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:016x})", self.0)
    }
}
impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl ObjectId {
    /// The id of a `put` object: the blake3 hash of its encoded bytes, so equal puts share
    /// one id and one copy.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// let id = shoal::ObjectId::for_content(b"encoded bytes");
    /// assert_eq!(id, shoal::ObjectId::for_content(b"encoded bytes"));
    /// ```
    pub fn for_content(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The id a content-addressed object with this digest has (its blake3 hash).
    ///
    /// ```
    /// use shoal_protocol::{Digest, ObjectId};
    /// let bytes = b"encoded bytes";
    /// assert_eq!(ObjectId::from_digest(Digest::of(bytes)), ObjectId::for_content(bytes));
    /// ```
    pub fn from_digest(digest: Digest) -> Self {
        Self(digest.0)
    }

    /// The id of the object a placement group's creator holds to learn when the group is
    /// placed (its value is `()` then, or the error why it never will be).
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::{GroupId, ObjectId};
    /// let (a, b) = (GroupId([1; 16]), GroupId([2; 16]));
    /// assert_ne!(ObjectId::for_group(a), ObjectId::for_group(b));
    /// ```
    pub fn for_group(group: GroupId) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"shoal.group.v1");
        h.update(&group.0);
        Self(*h.finalize().as_bytes())
    }

    /// The id of the `index`th return value of `task`.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::{ObjectId, TaskId};
    /// let task = TaskId([7; 16]);
    /// // A task with two returns (`num_returns = 2`) makes returns 0 and 1.
    /// assert_ne!(ObjectId::for_return(task, 0), ObjectId::for_return(task, 1));
    /// ```
    pub fn for_return(task: TaskId, index: u32) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"shoal.return.v1");
        h.update(&task.0);
        h.update(&index.to_le_bytes());
        Self(*h.finalize().as_bytes())
    }
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// The secret of an actor's handles: whoever holds a handle holds it, and the actor's node
/// takes a call or a kill only with it. Chosen at random by the actor's creator; unlike the
/// actor's id, it never shows in records, logs or status.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ActorToken(pub [u8; 16]);

impl fmt::Debug for ActorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActorToken(..)")
    }
}

/// A process's secret for the ids of the tasks it submits (random per process, never sent):
/// with it, nobody else can predict the ids of its tasks, actors and results.
#[derive(Clone)]
pub struct TaskKey([u8; 32]);

impl TaskKey {
    /// A key from 32 random bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TaskKey(..)")
    }
}

impl TaskId {
    /// Task `seq` of the process `client`: predictable from the two, so for tests and the
    /// simulator. Programs use [`TaskId::keyed`].
    ///
    /// ```
    /// use shoal_protocol::{ClientId, TaskId};
    /// let task = TaskId::new(ClientId(5), 42);
    /// assert_eq!(task, TaskId::new(ClientId(5), 42)); // predictable
    /// assert_eq!(task.seq(), 42);
    /// ```
    pub fn new(client: ClientId, seq: u64) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&client.0.to_le_bytes());
        b[8..].copy_from_slice(&seq.to_le_bytes());
        Self(b)
    }

    /// Task `seq` of the process whose secret is `key`: the counter, and 64 bits derived
    /// from it with the key. Knowing a process's client id, or the ids of some of its
    /// tasks, tells nothing of the ids of its other tasks, hence of their results and
    /// actors.
    ///
    /// ```
    /// use shoal_protocol::{TaskId, TaskKey};
    /// let key = TaskKey::from_bytes([42; 32]); // random bytes in a real process
    /// let (a, b) = (TaskId::keyed(&key, 1), TaskId::keyed(&key, 2));
    /// assert_ne!(a, b);
    /// assert!(a.seq() < b.seq()); // the counter stays readable
    /// ```
    pub fn keyed(key: &TaskKey, seq: u64) -> Self {
        let tag = blake3::keyed_hash(&key.0, &seq.to_le_bytes());
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&tag.as_bytes()[..8]);
        b[8..].copy_from_slice(&seq.to_le_bytes());
        Self(b)
    }

    /// The task's number in the process that submitted it (tasks of one process sort in
    /// the order it submitted them).
    ///
    /// ```
    /// use shoal_protocol::{TaskId, TaskKey};
    /// let key = TaskKey::from_bytes([42; 32]);
    /// let mut tasks = vec![TaskId::keyed(&key, 3), TaskId::keyed(&key, 1)];
    /// tasks.sort_by_key(TaskId::seq); // in the order they were submitted
    /// assert_eq!(tasks[0].seq(), 1);
    /// ```
    pub fn seq(&self) -> u64 {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&self.0[8..]);
        u64::from_le_bytes(seq)
    }
}

/// A fast hasher for maps keyed by ids. Ids are already uniform (blake3 outputs) or mostly
/// so (a random client id and a counter), so a few multiply-rotate rounds per word spread
/// them well; SipHash's strength is not needed and showed in profiles of the node's hot
/// maps. Each process starts from its own seed ([`IdBuildHasher`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

const ID_HASH_K: u64 = 0x517c_c1b7_2722_0a95;

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(ID_HASH_K);
        }
        for b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(ID_HASH_K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(ID_HASH_K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // A final mix so that the low bits (the table index) depend on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

/// The per-process seed of [`IdBuildHasher`].
static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Fixes the seed of every [`IdMap`] of this process, so that the order in which maps are
/// iterated is the same on every run (a simulation replays exactly). Only for tests: a fixed
/// seed lets whoever picks the ids crowd one bucket. Must be called before any `IdMap` is
/// made; says whether the seed is now `seed`.
pub fn fix_hash_seed_for_tests(seed: u64) -> bool {
    *SEED.get_or_init(|| seed) == seed
}

/// Builds [`IdHasher`]s from a per-process random seed.
#[derive(Clone, Copy, Debug)]
pub struct IdBuildHasher(u64);

impl Default for IdBuildHasher {
    fn default() -> Self {
        Self(*SEED.get_or_init(|| {
            // The std's random hasher keys are the process's entropy; borrow one.
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        }))
    }
}

impl std::hash::BuildHasher for IdBuildHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

/// A `HashMap` keyed by ids, with [`IdHasher`].
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;

#[cfg(test)]
mod tests {
    #[test]
    fn id_hashes_spread_over_buckets() {
        use std::hash::BuildHasher;
        let b = IdBuildHasher::default();
        // Task ids of one client differ only in their counter: their hashes must still
        // differ in the low bits that pick a bucket.
        let mut buckets = [0u32; 64];
        for seq in 0..64_000u64 {
            let h = b.hash_one(TaskId::new(ClientId(42), seq));
            buckets[(h & 63) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (800..1200).contains(n)),
            "{buckets:?}"
        );
    }

    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ObjectId::for_content(b"hello");
        assert_eq!(ObjectId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ObjectId::from_hex("zz"), None);
        assert_eq!(ObjectId::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn return_ids_differ_by_task_and_index() {
        let t1 = TaskId::new(ClientId(1), 1);
        let t2 = TaskId::new(ClientId(1), 2);
        assert_ne!(ObjectId::for_return(t1, 0), ObjectId::for_return(t2, 0));
        assert_ne!(ObjectId::for_return(t1, 0), ObjectId::for_return(t1, 1));
        assert_eq!(ObjectId::for_return(t1, 0), ObjectId::for_return(t1, 0));
    }

    #[test]
    fn task_ids_sort_by_their_numbers_in_submission_order() {
        // The bytes are little-endian: 256 sorts before 1 by bytes, not by numbers.
        let (a, b) = (TaskId::new(ClientId(3), 1), TaskId::new(ClientId(3), 256));
        assert!(a.0 > b.0);
        assert!(a.seq() < b.seq());
        assert_eq!(b.seq(), 256);
    }

    #[test]
    fn keyed_task_ids_cannot_be_predicted_without_the_key() {
        let (k1, k2) = (TaskKey::from_bytes([1; 32]), TaskKey::from_bytes([2; 32]));
        let a = TaskId::keyed(&k1, 7);
        assert_eq!(a, TaskId::keyed(&k1, 7));
        assert_eq!(a.seq(), 7);
        // Another key, or the next number, gives an unrelated tag (and result id).
        assert_ne!(a.0[..8], TaskId::keyed(&k2, 7).0[..8]);
        let next = TaskId::keyed(&k1, 8);
        assert_ne!(a.0[..8], next.0[..8]);
        assert_ne!(ObjectId::for_return(a, 0), ObjectId::for_return(next, 0));
        // Nothing of the key shows in its debug form.
        assert_eq!(format!("{k1:?}"), "TaskKey(..)");
    }

    #[test]
    fn content_ids_are_blake3() {
        assert_eq!(
            ObjectId::for_content(b"a").0,
            *blake3::hash(b"a").as_bytes()
        );
    }
}
