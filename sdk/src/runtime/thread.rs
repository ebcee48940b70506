//! The `shoal-runtime` thread, and the clean-up at the exit of a program with an embedded
//! node.
//!
//! One thread runs a single-threaded tokio runtime with the connection's reader and writer
//! and, when no daemon was reachable, the embedded node itself, so that messages between this
//! process and its node never cross a thread. It runs until the process exits. An embedded
//! node's store, spill directory, socket and mesh identity are removed by an `atexit` hook.

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::{connect, Context};
use crate::error::InitError;

/// The runtime thread, as the context holds it.
#[derive(Debug)]
pub(super) struct RuntimeThread {
    /// Spawns onto the runtime.
    handle: Handle,
    /// Held for the life of the process, the thread's `block_on` never returns. Dropped (a
    /// failed `init`), it lets the thread end.
    _park: oneshot::Sender<()>,
}

impl RuntimeThread {
    /// Starts the thread, with nothing on its runtime yet.
    pub(super) fn start() -> Result<Self, InitError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| InitError::Runtime(e.to_string()))?;
        let handle = rt.handle().clone();
        let (park, parked) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("shoal-runtime".into())
            .spawn(move || {
                if rt.block_on(parked).is_err() {
                    tracing::debug!("runtime released (attaching failed)");
                }
            })
            .map_err(|e| InitError::Runtime(e.to_string()))?;
        Ok(Self {
            handle,
            _park: park,
        })
    }

    /// Runs `fut` on the runtime and blocks this thread for its output (`None` if the
    /// runtime has stopped).
    pub(super) fn block_on<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            if tx.send(fut.await).is_err() {
                tracing::debug!("nobody waits for the runtime's answer any more");
            }
        });
        rx.recv().ok()
    }

    /// Starts the connection's task.
    pub(super) fn start_transport<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }

    /// A future that ends after `d`, timed on the runtime thread (so under any executor).
    pub(super) fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel::<()>();
        self.handle.spawn(async move {
            tokio::time::sleep(d).await;
            if tx.send(()).is_err() {
                // The waiter is gone: what it raced against finished first.
            }
        });
        async move {
            if rx.await.is_err() {
                // The runtime stopped before the time was up.
            }
        }
    }
}

/// Removes an embedded node's files when the program exits.
pub(super) fn clean_up_at_exit(ctx: &Context) {
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    extern "C" fn clean_up() {
        for path in PATHS.get().into_iter().flatten() {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            if removed.is_err() {
                // Gone already, or not ours to remove: nothing more to do at exit.
            }
        }
    }
    let Some(node) = ctx.embedded.as_ref() else {
        return;
    };
    let paths = vec![
        ctx.store_dir.clone(),
        ctx.socket.clone(),
        node.spill_dir().to_path_buf(),
        connect::peer_dir(ctx.client),
    ];
    if PATHS.set(paths).is_ok() {
        // SAFETY: registers a plain `extern "C"` function that captures nothing.
        if unsafe { libc::atexit(clean_up) } != 0 {
            tracing::warn!("cannot register the exit hook: the embedded node's files stay");
        }
    }
}
