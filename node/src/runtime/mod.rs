//! The shell around the core: the one event loop that owns every socket, process, file and
//! spawned future of a node, the local API socket, and worker processes.
//!
//! - `event_loop`: feeds the [`crate::core::NodeCore`] its inputs and carries out its
//!   outputs; a staged shutdown.
//! - [`api`]: the local Unix socket.
//! - [`access`]: who may attach to it (`SO_PEERCRED`), and the private directories.
//! - [`workers`]: worker processes.
//! - [`sandbox`]: how workers of code shipped by peers are confined, and the memory monitor.
//! - [`queue`]: a process's outbound queue, bounded in messages and bytes.
//! - [`metrics`]: the Prometheus endpoint (`--metrics`).

pub mod access;
pub mod api;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub(crate) mod event_loop;
pub mod http;
#[cfg(feature = "mesh")]
mod mesh;
pub mod metrics;
pub mod output;
pub mod queue;
pub mod sandbox;
pub mod workers;

use shoal_protocol::{Hello, NodeStatus, ToNode};
use tokio::sync::oneshot;

pub use crate::core::ConnId;

/// Capacity of the core's inbox.
pub const EVENT_QUEUE: usize = 8192;

/// Something that happened, for the event loop to hand to the core.
#[derive(Debug)]
pub enum Event {
    /// A process finished its handshake; replies go to `tx`.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its handshake.
        hello: Hello,
        /// Its outbound queue.
        tx: queue::ClientTx,
    },
    /// Messages from a connection, in order.
    Messages {
        /// The connection.
        conn: ConnId,
        /// The messages.
        msgs: Vec<ToNode>,
    },
    /// A connection ended.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// Lines a worker wrote wait in its output.
    WorkerOutput(std::sync::Arc<output::Output>),
    /// Status for an in-process caller.
    Status(oneshot::Sender<NodeStatus>),
    /// A scrape of the metrics endpoint.
    Metrics(oneshot::Sender<Box<metrics::Scrape>>),
    /// Something from the network.
    #[cfg(feature = "mesh")]
    Net(crate::net::link::NetEvent),
    /// A peer asks for an object's bytes.
    #[cfg(feature = "mesh")]
    Serve {
        /// The peer asking.
        peer: shoal_protocol::PeerKey,
        /// The object.
        id: shoal_protocol::ObjectId,
        /// Its file, pinned until the guard inside drops.
        reply: oneshot::Sender<Option<crate::net::objects::Served>>,
    },
    /// A transfer to a peer ended: the object may move again.
    #[cfg(feature = "mesh")]
    Served {
        /// The object.
        id: shoal_protocol::ObjectId,
    },
}
