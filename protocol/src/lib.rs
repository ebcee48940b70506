//! Shoal's wire protocol: the vocabulary that drivers, workers, the CLI and nodes speak.
//!
//! Layers, bottom up:
//! - [`ids`]: 32-byte object ids (content-addressed or derived from a task), task, actor,
//!   binary and node ids.
//! - [`codec`]: the one place that knows the serialization format (bincode 2, with a byte
//!   limit on every decode). Everything else calls [`codec::encode`] / [`codec::decode`].
//! - [`frame`]: length-prefixed frames with a maximum size, for byte streams.
//! - [`env`](mod@env): the environment variables a node starts its worker processes with.
//! - [`messages`]: what travels in the frames ([`ToNode`], [`ToClient`]) and the values they
//!   carry (task specs, objects, typed task errors, node status).
//! - [`state`]: the state API's questions, rows and their merging (`shoal list`).
//! - [`swim`]: what peers' membership tells each other.
//!
//! This crate has no async runtime and no networking in its dependency tree (CI checks it),
//! so every decoder here is tested with plain byte slices.
//!
//! ```
//! use shoal_protocol::{codec, frame, ToNode, ObjectId};
//! let msg = ToNode::Release { ids: vec![ObjectId::for_content(b"x")] };
//! let mut buf = Vec::new();
//! frame::encode_frame(&mut buf, &msg, frame::DEFAULT_MAX_FRAME).unwrap();
//! let (payload, used) = frame::split_frame(&buf, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
//! assert_eq!(used, buf.len());
//! let back: ToNode = codec::decode(payload, frame::DEFAULT_MAX_FRAME).unwrap();
//! assert_eq!(back, msg);
//! ```
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod env;
pub mod frame;
pub mod groups;
pub mod ids;
pub mod mesh;
pub mod messages;
pub mod state;
pub mod swim;

pub use codec::{DecodeError, EncodeError};
pub use frame::FrameError;
pub use groups::{GroupStrategy, MAX_BUNDLES};
pub use ids::{
    ActorId, ActorToken, BinaryId, ClientId, Digest, GroupId, IdMap, NodeId, ObjectId, TaskId,
    TaskKey,
};
pub use mesh::PeerKey;
pub use messages::*;

/// Four bytes at the start of every handshake, so a stray client is recognised at once.
pub const MAGIC: [u8; 4] = *b"SHOL";
/// Bumped on every incompatible change of [`messages`].
pub const PROTOCOL_VERSION: u16 = 20;
/// The status a worker exits with when it stops a task it runs on [`ToClient::Cancel`]:
/// nothing queued behind that task had started.
pub const CANCELLED_EXIT: i32 = 87;
