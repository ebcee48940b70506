//! The connection's two loops, on the runtime thread: the writer sends what the outbox
//! holds, many frames per write; the reader hands what the node sends to
//! [`Context::dispatch`]. Over a socket both speak [`shoal_protocol::frame`]; to an embedded
//! node they pass messages without encoding them.
//!
//! The connection ends when either loop ends: the node went away (the reader sees the end of
//! the stream), or the outbox was closed and the writer has sent what it held (shutdown).

use std::sync::Arc;

use shoal_node::LocalClient;
use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::ToClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::work::WorkItem;
use super::Context;

/// A connection to a node, once the handshake is done.
pub(super) enum Transport {
    /// The stream, and the frames read past the handshake.
    Socket(UnixStream, FrameDecoder),
    /// An embedded node's in-process connection.
    Local(LocalClient),
}

/// Moves messages until the connection ends, then tells the context.
pub(super) async fn run(ctx: Arc<Context>, transport: Transport, work: mpsc::Sender<WorkItem>) {
    match transport {
        Transport::Socket(stream, frames) => run_socket(&ctx, stream, frames, work).await,
        Transport::Local(local) => run_local(&ctx, local, work).await,
    }
    ctx.on_disconnect();
}

async fn run_socket(
    ctx: &Context,
    stream: UnixStream,
    mut frames: FrameDecoder,
    work: mpsc::Sender<WorkItem>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        let mut out = Vec::with_capacity(64 * 1024);
        while let Some(batch) = ctx.outbox.next_batch().await {
            for m in &batch {
                if let Err(e) = frame::encode_frame(&mut out, m, frame::DEFAULT_MAX_FRAME) {
                    tracing::error!(error = %e, "cannot encode a message; dropped");
                }
            }
            if let Err(e) = wr.write_all(&out).await {
                tracing::debug!(error = %e, "cannot write to the node");
                return;
            }
            out.clear();
        }
        // Closed by shutdown, everything sent: the node sees the end of our stream.
        if let Err(e) = wr.shutdown().await {
            tracing::debug!(error = %e, "cannot close the connection");
        }
    };
    let reader = async {
        loop {
            loop {
                match frames.next_message::<ToClient>() {
                    Ok(Some(msg)) => ctx.dispatch(msg, &work).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "bad frame from node");
                        return;
                    }
                }
            }
            match rd.read_buf(frames.input()).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read from the node");
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
        () = close_log_windows(ctx) => {}
    }
}

/// Prints the repeats of task output held back once their window has passed, while the
/// connection lasts.
async fn close_log_windows(ctx: &Context) {
    let mut tick = tokio::time::interval(super::logs::WINDOW / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ctx.logs.close_passed();
    }
}

async fn run_local(ctx: &Context, mut local: LocalClient, work: mpsc::Sender<WorkItem>) {
    let sender = local.sender();
    let writer = async {
        while let Some(batch) = ctx.outbox.next_batch().await {
            if sender.send(batch).await.is_err() {
                // The node has stopped: the reader sees it too.
                return;
            }
        }
    };
    let reader = async {
        while let Some(msg) = local.recv().await {
            ctx.dispatch(msg, &work).await;
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
        () = close_log_windows(ctx) => {}
    }
    // Detach from the node (a no-op if it has stopped).
    sender.close().await;
}
