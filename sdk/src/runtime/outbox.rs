//! The outgoing queue: every message this process sends its node goes through it.
//!
//! User threads push; the connection's writer (on the runtime thread) swaps the whole queue
//! out at once, so many messages cost one wake-up and one write. The queue is bounded: a
//! thread that pushes into a full queue waits until the writer has taken it. Consecutive
//! `Release`s (or `Hold`s) are merged into one message.
//!
//! Closing it is either graceful ([`Outbox::close`]: the writer still takes what was queued,
//! then sees the end) or not ([`Outbox::abort`]: the connection is gone, the queue is dropped).
//! Either way, later pushes are dropped and no pusher waits any more.

use std::sync::{Condvar, Mutex, MutexGuard};

use shoal_protocol::ToNode;
use tokio::sync::Notify;

/// Ids merged into one `Release` or `Hold` at most (a frame stays far below its limit).
const MERGE_LIMIT: usize = 64 * 1024;

/// Messages queued before pushing threads wait for the writer.
const OUTBOX_LIMIT: usize = 1 << 16;

#[derive(Debug, Default)]
struct Queue {
    messages: Vec<ToNode>,
    closed: bool,
}

/// The queue of messages for the node.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// Signalled when the writer took the queue, or it closed.
    space: Condvar,
    wake_writer: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message, waiting while the queue is full. Returns `false` (and drops the
    /// message) once the outbox is closed.
    pub(crate) fn push(&self, msg: ToNode) -> bool {
        let mut q = self.lock();
        while q.messages.len() >= OUTBOX_LIMIT && !q.closed {
            q = self.space.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        if q.closed {
            return false;
        }
        let was_empty = q.messages.is_empty();
        // Consecutive releases (or holds) travel as one message, up to a bound.
        match (&msg, q.messages.last_mut()) {
            (ToNode::Release { ids: new }, Some(ToNode::Release { ids }))
            | (ToNode::Hold { ids: new }, Some(ToNode::Hold { ids }))
                if ids.len() < MERGE_LIMIT =>
            {
                ids.extend_from_slice(new);
                return true;
            }
            _ => {}
        }
        q.messages.push(msg);
        drop(q);
        if was_empty {
            self.wake_writer.notify_one();
        }
        true
    }

    /// Everything queued, once there is something; `None` once the outbox is closed and
    /// empty (the writer's end).
    pub(crate) async fn next_batch(&self) -> Option<Vec<ToNode>> {
        loop {
            {
                let mut q = self.lock();
                if !q.messages.is_empty() {
                    let batch = std::mem::take(&mut q.messages);
                    drop(q);
                    self.space.notify_all();
                    return Some(batch);
                }
                if q.closed {
                    return None;
                }
            }
            self.wake_writer.notified().await;
        }
    }

    /// Takes no more messages; the writer still sends those queued, then ends.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.space.notify_all();
        self.wake_writer.notify_one();
    }

    /// Takes no more messages and drops those queued: there is no one to send them to.
    pub(crate) fn abort(&self) {
        {
            let mut q = self.lock();
            q.closed = true;
            q.messages.clear();
        }
        self.space.notify_all();
        self.wake_writer.notify_one();
    }
}
