//! The environment a node gives the worker processes it starts.
//!
//! A worker is the driver's own executable, started by the node with these variables set.
//! The node writes them (`shoal_node::workers`) and the SDK reads them before `main` runs;
//! both take the names from here, so the two sides cannot drift apart.

/// The worker's id, in decimal. Its presence is what puts a process in worker mode.
pub const WORKER_ID: &str = "SHOAL_WORKER_ID";

/// The blake3 id of the worker's binary, in hex: the binary the tasks it submits run in.
pub const BINARY_ID: &str = "SHOAL_BINARY_ID";

/// The node's socket, which the worker connects back to. Drivers read the same variable to
/// find a node to attach to.
pub const SOCKET: &str = "SHOAL_SOCKET";

/// A connected socket to the node that the worker inherited, by descriptor number. Set for
/// sandboxed workers, which run as another user and may not open the node's socket file; the
/// worker then uses this descriptor instead of [`SOCKET`].
pub const SOCKET_FD: &str = "SHOAL_SOCKET_FD";
