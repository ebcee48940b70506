//! A process's outbound queue: bounded in messages and in bytes, so that one slow client can
//! hold at most [`CLIENT_QUEUE_BYTES`] of the node's memory (not 64 Ki messages of up to
//! 64 KiB each). The node never waits on it: a message that does not fit is refused, and the
//! shell then detaches the client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use shoal_protocol::{ArgValue, ObjectValue, ToClient};
use tokio::sync::mpsc;

/// Messages queued towards one client at most.
pub const CLIENT_QUEUE: usize = 1 << 16;
/// Bytes (approximately, as encoded) queued towards one client at most.
pub const CLIENT_QUEUE_BYTES: usize = 256 << 20;

/// About how many bytes `msg` takes encoded (what it holds inline, plus a header).
pub fn weight(msg: &ToClient) -> usize {
    const HEADER: usize = 64;
    let args = |args: &[ArgValue]| -> usize {
        args.iter()
            .map(|a| match a {
                ArgValue::Inline(v) => v.len() + 8,
                ArgValue::Shared(..) => 80,
            })
            .sum()
    };
    HEADER
        + match msg {
            ToClient::Object {
                value: ObjectValue::Inline(v),
                ..
            } => v.len(),
            ToClient::Execute(exec) => exec.function.len() + args(&exec.args),
            ToClient::HostActor(host) => host.class.len() + args(&host.args),
            ToClient::Objects { objects, .. } => objects.len() * 128,
            ToClient::Status { .. } => 4096,
            _ => 0,
        }
}

/// The sending half (the node's side).
#[derive(Clone, Debug)]
pub struct ClientTx {
    tx: mpsc::Sender<ToClient>,
    bytes: Arc<AtomicUsize>,
}

/// The receiving half (the connection's writer, or an in-process client).
#[derive(Debug)]
pub struct ClientRx {
    rx: mpsc::Receiver<ToClient>,
    bytes: Arc<AtomicUsize>,
}

/// A new queue.
pub fn client_queue() -> (ClientTx, ClientRx) {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        ClientTx {
            tx,
            bytes: bytes.clone(),
        },
        ClientRx { rx, bytes },
    )
}

impl ClientTx {
    /// Queues `msg` without waiting. Refused (`Full`) when the queue holds as many messages
    /// or bytes as it may (a single message larger than the byte bound still goes into an
    /// empty queue).
    pub fn try_send(&self, msg: ToClient) -> Result<(), mpsc::error::TrySendError<ToClient>> {
        let w = weight(&msg);
        let before = self.bytes.fetch_add(w, Ordering::AcqRel);
        if before > 0 && before + w > CLIENT_QUEUE_BYTES {
            self.bytes.fetch_sub(w, Ordering::AcqRel);
            return Err(mpsc::error::TrySendError::Full(msg));
        }
        self.tx.try_send(msg).inspect_err(|_| {
            self.bytes.fetch_sub(w, Ordering::AcqRel);
        })
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl ClientRx {
    /// The next message; `None` once the node dropped its side.
    pub async fn recv(&mut self) -> Option<ToClient> {
        let msg = self.rx.recv().await?;
        self.bytes.fetch_sub(weight(&msg), Ordering::AcqRel);
        Some(msg)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<ToClient> {
        let msg = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(weight(&msg), Ordering::AcqRel);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::ObjectId;

    fn object(len: usize) -> ToClient {
        ToClient::Object {
            id: ObjectId([1; 32]),
            value: ObjectValue::Inline(vec![0; len]),
        }
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let (tx, mut rx) = client_queue();
        let big = CLIENT_QUEUE_BYTES / 4;
        for _ in 0..3 {
            tx.try_send(object(big)).unwrap();
        }
        // The fourth would take the queue past its bound.
        assert!(matches!(
            tx.try_send(object(big)),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        // Small messages still fit; what is read frees its bytes.
        tx.try_send(object(10)).unwrap();
        assert!(rx.try_recv().is_some());
        tx.try_send(object(big)).unwrap();
        while rx.try_recv().is_some() {}
        assert_eq!(tx.queued_bytes(), 0);
        // One message larger than the bound goes into an empty queue.
        tx.try_send(object(CLIENT_QUEUE_BYTES * 2)).unwrap();
        assert!(tx.try_send(object(1)).is_err());
    }
}
