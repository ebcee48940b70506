//! The SDK's errors, one type per operation.

use std::path::PathBuf;
use std::time::Duration;

pub use shoal_protocol::StoreError;
use shoal_protocol::TaskError;

/// Why `get` (or `wait`) produced no value. `get` never hangs without a way out: a task's
/// failure, a dead node or a timeout each end it with one of these.
///
/// ```no_run
/// # use std::time::Duration;
/// #[shoal::remote]
/// fn parse(s: String) -> u64 {
///     s.parse().expect("a number")
/// }
///
/// use shoal::{GetError, TaskError};
/// match parse.remote("ten".to_string()).get_blocking_timeout(Duration::from_secs(10)) {
///     Ok(n) => println!("{n}"),
///     Err(GetError::Task(TaskError::Panicked { message, .. })) => {
///         eprintln!("the task panicked: {message}")
///     }
///     Err(GetError::Timeout(after)) => eprintln!("no answer after {after:?}"),
///     Err(e) => eprintln!("no value: {e}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GetError {
    /// The task that makes the object failed: panicked, its worker died, its arguments did
    /// not decode, its function does not exist, …
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The value is there but is not a `T`.
    #[error("the object could not be decoded as the requested type: {0}")]
    Decode(String),
    /// The object is in the shared-memory store but could not be mapped.
    #[error("cannot read the object from the store: {0}")]
    Store(String),
    /// The time limit passed first.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection to the node is gone.
    #[error("lost the connection to the node")]
    Disconnected,
    /// `shoal::shutdown` ended this process's attachment to its node.
    #[error("shoal was shut down in this process")]
    Shutdown,
    /// The call was not sent: the handle has its
    /// [`max_pending_calls`](crate::ActorOptions::max_pending_calls) calls not yet done (Ray's
    /// `PendingCallsLimitExceeded`).
    #[error("actor {actor} has {limit} calls pending from this handle (max_pending_calls)")]
    PendingCallsLimitExceeded {
        /// The actor.
        actor: shoal_protocol::ActorId,
        /// The handle's limit.
        limit: u32,
    },
}

/// Why `put` failed.
///
/// ```no_run
/// use shoal::{PutError, StoreError};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// match shoal::put(&vec![0u8; 1 << 30]) {
///     Ok(big) => println!("stored as {}", big.id()),
///     Err(PutError::Store(StoreError::Full { requested, capacity, .. })) => {
///         eprintln!("no room for {requested} bytes in a store of {capacity}")
///     }
///     Err(e) => return Err(e.into()),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PutError {
    /// The value's `Serialize` failed.
    #[error("cannot encode the value: {0}")]
    Encode(String),
    /// The value is a ref itself (an `ObjectRef`, or a newtype around one): it is stored
    /// already; put a value that holds refs (a `Vec` of them, a struct) instead, as Ray
    /// refuses `put` of an `ObjectRef`.
    #[error("put of an ObjectRef: the object is stored already")]
    ObjectRef,
    /// The store refused it (full, or an I/O error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `shoal::shutdown` ended this process's attachment to its node.
    #[error("shoal was shut down in this process")]
    Shutdown,
}

/// Why `wait` refused its arguments (as Ray's `wait` does).
///
/// ```
/// use shoal::{ObjectRef, WaitError};
/// let refs: Vec<ObjectRef<u64>> = Vec::new();
/// match shoal::wait_blocking(&refs, 1, None) {
///     Err(WaitError::TooMany { num_ready, refs }) => {
///         assert_eq!((num_ready, refs), (1, 0));
///     }
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WaitError {
    /// The same ref was given twice: a wait needs distinct refs.
    #[error("wait needs distinct refs: {0} is given twice")]
    Duplicate(shoal_protocol::ObjectId),
    /// More ready refs asked for than refs given.
    #[error("wait asked for {num_ready} ready refs of {refs}")]
    TooMany {
        /// Ready refs asked for.
        num_ready: usize,
        /// Refs given.
        refs: usize,
    },
}

/// Why `cancel` refused.
///
/// ```no_run
/// use shoal::CancelError;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stored = shoal::put(&42u64)?;
/// // A put is no task's result: there is nothing to cancel.
/// assert_eq!(shoal::cancel(&stored), Err(CancelError::NotSubmitter(stored.id())));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CancelError {
    /// The ref is not the result of a task this process submitted (a `put`, or a ref it was
    /// given): only a task's submitter may cancel it.
    #[error("object {0} is not the result of a task this process submitted")]
    NotSubmitter(shoal_protocol::ObjectId),
    /// `force` was asked for an actor call: it would kill the actor (use `shoal::kill`).
    #[error("an actor call cannot be force-cancelled (use shoal::kill to end the actor)")]
    ForceActorCall,
    /// `shoal::shutdown` ended this process's attachment to its node.
    #[error("shoal was shut down in this process")]
    Shutdown,
}

/// Why `shoal::init` failed.
///
/// ```no_run
/// use shoal::InitError;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// match shoal::init() {
///     Ok(node) => println!("attached to {}", node.node_id()),
///     Err(InitError::SocketDir(why)) => {
///         eprintln!("{why}: set SHOAL_SOCKET to a socket in a directory of your own");
///         std::process::exit(2);
///     }
///     Err(e) => return Err(e.into()),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A daemon was required but none answered on the socket.
    #[error("cannot connect to a node on {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    /// The embedded node could not start.
    #[error("cannot start an embedded node: {0}")]
    Embedded(String),
    /// The node refused the handshake.
    #[error("handshake with the node failed: {0}")]
    Handshake(String),
    /// The per-user socket directory is not safe to use: another user owns it or may write
    /// to it (and so may have planted a socket there).
    #[error("refusing the node socket directory: {0}")]
    SocketDir(String),
    /// The runtime thread could not start.
    #[error("cannot start the runtime thread: {0}")]
    Runtime(String),
    /// This program's executable could not be read (it is what workers run).
    #[error("cannot read this program's executable: {0}")]
    Binary(String),
    /// This process was started as a worker but did not enter worker mode: the program has
    /// no `#[shoal::remote]` function linked in, so it cannot serve as a worker.
    #[error("started as a worker, but this binary has no #[shoal::remote] functions")]
    NotWorkerMode,
    /// `shoal::shutdown` ended this process's attachment to its node: it does not attach
    /// again.
    #[error("shoal was shut down in this process")]
    Shutdown,
}
