//! The network's tasks and how they stop.
//!
//! Every task the network starts is kept by a [`Tasks`]: the stream acceptors and their
//! handlers, the link writers and the notices to the node in one tracker, the network task
//! and libp2p's own connection tasks (the swarm's executor) in another. A tree of
//! cancellation tokens stops them in stages ([`Tasks::shutdown`], as iroh's router does):
//!
//! 1. `accept`: acceptors stop taking streams (their protocols are unregistered), inbound
//!    control links stop reading, and no more messages are queued to peers.
//! 2. The handlers still running (a stream being served, a link writer draining its queue)
//!    get [`GRACE`] to finish; then `handlers` is cancelled and they are dropped.
//! 3. `swarm`: the network task stops listening, closes the connections (for at most
//!    [`CLOSE_GRACE`]) and drops the swarm; libp2p's connection tasks end with it.
//! 4. `root`: whatever is left is dropped.
//!
//! The tree is root → swarm → handlers → accept: cancelling a stage cancels the stages
//! before it, so dropping the root stops everything at once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{PeerLimits, StreamKind, StreamPermit};

/// How long stream handlers and link writers get to finish once the network stops
/// accepting, before they are dropped.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// How long the network task waits for its connections to close before it drops them.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The network's tasks: where they are spawned and how they are stopped. They all run on
/// the runtime the network was started on, whichever thread spawns them (a message queued
/// to a new peer from outside the runtime starts its writer there too).
#[derive(Clone, Debug)]
pub(crate) struct Tasks {
    runtime: tokio::runtime::Handle,
    root: CancellationToken,
    swarm: CancellationToken,
    handlers: CancellationToken,
    accept: CancellationToken,
    /// Acceptors, stream handlers, link writers, notices to the node.
    handler_tasks: TaskTracker,
    /// The network task and the swarm's connection tasks.
    swarm_tasks: TaskTracker,
}

impl Tasks {
    /// Tasks on `runtime`, none yet.
    pub(crate) fn new(runtime: tokio::runtime::Handle) -> Self {
        let root = CancellationToken::new();
        let swarm = root.child_token();
        let handlers = swarm.child_token();
        let accept = handlers.child_token();
        Self {
            runtime,
            root,
            swarm,
            handlers,
            accept,
            handler_tasks: TaskTracker::new(),
            swarm_tasks: TaskTracker::new(),
        }
    }

    /// Spawns a handler: it runs until it ends, or until handlers are stopped (stage 2),
    /// when it is dropped at its next await.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.handlers.clone();
        // The handle is not kept: the tracker waits for the task, and a panic is reported
        // by the runtime's hook.
        let task = async move {
            stop.run_until_cancelled_owned(fut).await;
        };
        drop(self.handler_tasks.spawn_on(task, &self.runtime));
    }

    /// Spawns a task of the swarm (the network task itself, or a connection task of
    /// libp2p's): dropped only at the last stage.
    pub(crate) fn spawn_swarm<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.root.clone();
        let task = async move {
            stop.run_until_cancelled_owned(fut).await;
        };
        drop(self.swarm_tasks.spawn_on(task, &self.runtime));
    }

    /// The swarm's executor: connection tasks run as tasks of the swarm.
    pub(crate) fn executor(&self) -> SwarmExecutor {
        SwarmExecutor(self.clone())
    }

    /// Cancelled once the network stops accepting (the first stage).
    pub(crate) fn accept_token(&self) -> CancellationToken {
        self.accept.clone()
    }

    /// Cancelled when the network task must close the connections and end.
    pub(crate) fn swarm_token(&self) -> CancellationToken {
        self.swarm.clone()
    }

    /// Whether the network is stopping (or stopped).
    pub(crate) fn stopping(&self) -> bool {
        self.accept.is_cancelled()
    }

    /// Stops everything at once, without waiting (no handle is left to wait).
    pub(crate) fn abort(&self) {
        self.root.cancel();
    }

    /// Stops the network in stages (see the module documentation) and returns once every
    /// task has ended. Idempotent: a second call, or a concurrent one, waits for the same end.
    pub(crate) async fn shutdown(&self) {
        self.accept.cancel();
        self.handler_tasks.close();
        if tokio::time::timeout(GRACE, self.handler_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.handler_tasks.len(),
                grace = ?GRACE,
                "network handlers still running after the grace; dropping them"
            );
            self.handlers.cancel();
            self.handler_tasks.wait().await;
        }
        self.swarm.cancel();
        self.swarm_tasks.close();
        // The network task bounds its own closing by CLOSE_GRACE; libp2p's connection tasks
        // end once the swarm is dropped. The margin covers a task that does not.
        let bound = CLOSE_GRACE + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.swarm_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.swarm_tasks.len(),
                "swarm tasks still running after the swarm was dropped; dropping them"
            );
        }
        self.root.cancel();
        self.swarm_tasks.wait().await;
        // A notice spawned while the connections closed returns at once (its token is
        // cancelled); wait for it all the same.
        self.handler_tasks.wait().await;
    }
}

/// Runs the swarm's connection tasks as tasks of the network (see [`Tasks::spawn_swarm`]).
#[derive(Debug)]
pub(crate) struct SwarmExecutor(Tasks);

impl libp2p::swarm::Executor for SwarmExecutor {
    fn exec(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn_swarm(future);
    }
}

/// Runs `handle` on each stream of `incoming` until `stop` is cancelled or the swarm is
/// gone; then stops accepting (dropping `incoming` unregisters the protocol) and waits for
/// the handlers still running. A stream is handled only if `limits` admit one more of
/// `kind` from its peer; the handler gets the permit, which counts the stream until
/// dropped; a stream refused is dropped at once, which resets it. The handlers run in a
/// `JoinSet` owned by this future, so dropping the future aborts them.
pub(crate) async fn serve_streams<F, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    stop: CancellationToken,
    limits: PeerLimits,
    kind: StreamKind,
    mut handle: F,
) where
    F: FnMut(PeerId, libp2p::Stream, StreamPermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let what = kind.name();
    let mut running = JoinSet::new();
    // For a kind whose newest stream wins: each peer's handlers, oldest first.
    let mut handlers: HashMap<PeerId, VecDeque<AbortHandle>> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let admitted = match oldest_to_end(&mut handlers, &limits, peer, kind) {
                        Some(oldest) => {
                            tracing::debug!(%peer, protocol = what, "a peer's new stream takes the place of its oldest");
                            // Its permit goes with it (the task is dropped on abort).
                            oldest.abort();
                            Ok(limits.admit_superseding(peer, kind))
                        }
                        None => limits.admit(peer, kind),
                    };
                    match admitted {
                        Ok(permit) => {
                            let handler = running.spawn(handle(peer, stream, permit));
                            if kind.newest_wins() {
                                handlers.entry(peer).or_default().push_back(handler);
                            }
                        }
                        // Logged (rate-limited) by the limits; dropping the stream resets it
                        // (and its writer learns so from the reset).
                        Err(_) => {
                            tracing::debug!(%peer, protocol = what, "a stream over the peer's limit reset");
                            drop(stream)
                        }
                    }
                }
                None => {
                    tracing::debug!(protocol = what, "the swarm is gone; no more streams");
                    break;
                }
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                ended(what, done);
                handlers.retain(|_, hs| {
                    hs.retain(|h| !h.is_finished());
                    !hs.is_empty()
                });
            }
        }
    }
    drop(incoming);
    if !running.is_empty() {
        tracing::debug!(
            protocol = what,
            streams = running.len(),
            "no longer accepting; letting open streams finish"
        );
    }
    while let Some(done) = running.join_next().await {
        ended(what, done);
    }
}

/// For a kind whose newest stream wins ([`StreamKind::newest_wins`]), the handler of
/// `peer`'s oldest stream once the peer has as many as it may: the caller ends it to make
/// room for the new one.
fn oldest_to_end(
    handlers: &mut HashMap<PeerId, VecDeque<AbortHandle>>,
    limits: &PeerLimits,
    peer: PeerId,
    kind: StreamKind,
) -> Option<AbortHandle> {
    if !kind.newest_wins() || limits.inbound(peer, kind) < kind.max_per_peer() {
        return None;
    }
    let hs = handlers.get_mut(&peer)?;
    hs.retain(|h| !h.is_finished());
    hs.pop_front()
}

/// Logs how a stream handler ended, if not normally.
fn ended(what: &'static str, result: Result<(), JoinError>) {
    match result {
        Ok(()) => {}
        Err(e) if e.is_panic() => {
            tracing::error!(protocol = what, error = %e, "a stream handler panicked")
        }
        Err(e) => tracing::debug!(protocol = what, error = %e, "a stream handler was cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::limits::CONTROL_STREAMS_PER_PEER;

    #[tokio::test(flavor = "current_thread")]
    async fn a_peers_new_control_stream_ends_its_oldest_when_it_has_as_many_as_it_may() {
        let limits = PeerLimits::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut running = JoinSet::new();
        let mut handlers: HashMap<PeerId, VecDeque<AbortHandle>> = HashMap::new();
        // Readers that never end on their own (a stream of a connection closed gracefully).
        let mut admit = |peer, running: &mut JoinSet<()>| {
            let permit = limits.admit(peer, StreamKind::Control).unwrap();
            let handle = running.spawn(async move {
                let _held = permit;
                std::future::pending::<()>().await
            });
            handlers.entry(peer).or_default().push_back(handle.clone());
            handle
        };
        let first = admit(a, &mut running);
        for _ in 1..CONTROL_STREAMS_PER_PEER {
            admit(a, &mut running);
        }
        admit(b, &mut running);
        // Below the limit nothing ends; at it, the peer's oldest does (and only for control).
        assert!(oldest_to_end(&mut handlers, &limits, b, StreamKind::Control).is_none());
        assert!(oldest_to_end(&mut handlers, &limits, a, StreamKind::Object).is_none());
        let oldest = oldest_to_end(&mut handlers, &limits, a, StreamKind::Control).unwrap();
        assert_eq!(oldest.id(), first.id());
        oldest.abort();
        let permit = limits.admit_superseding(a, StreamKind::Control);
        // The ended one's permit goes with its task: the count is back at the limit.
        assert!(running
            .join_next()
            .await
            .unwrap()
            .unwrap_err()
            .is_cancelled());
        assert_eq!(
            limits.inbound(a, StreamKind::Control),
            CONTROL_STREAMS_PER_PEER
        );
        drop(permit);
        assert_eq!(
            limits.inbound(a, StreamKind::Control),
            CONTROL_STREAMS_PER_PEER - 1
        );
        running.abort_all();
    }
}
