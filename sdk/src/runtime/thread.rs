//! The `shoal-runtime` thread, and how it ends.
//!
//! One thread runs a single-threaded tokio runtime with the connection's reader and writer
//! and, when no daemon was reachable, the embedded node itself, so that messages between this
//! process and its node never cross a thread. It runs until [`Context::shutdown`] (or the exit
//! hook of a program with an embedded node) stops it, in this order:
//!
//! 1. SDK calls start failing with [`GetError::Shutdown`]: every object cell fails, requests
//!    in flight fail, the outbox takes no more messages.
//! 2. The writer sends what was queued before, and the connection closes.
//! 3. The embedded node, if any, shuts down: it kills its workers, then removes its store,
//!    spill directory and socket; its mesh identity directory goes too.
//! 4. The runtime drops every task left and the thread ends; the caller joins it.
//!
//! A program with an embedded node runs the same stop from an `atexit` hook, so that a
//! worker still starting when `main` returns is killed before the socket it would connect to
//! disappears (it would otherwise print that it cannot connect).

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{connect, Context, Mode};
use crate::error::InitError;

/// How long the writer gets to send what was queued before the shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an embedded node gets to stop (kill its workers, remove its files).
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long blocking tasks left on the runtime get when it is dropped.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a blocking shutdown (and the exit hook) waits for the thread at most: the steps
/// above, and some slack.
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// Whether the thread has ended: for blocking waiters (a condition variable) and async ones
/// (a watch, which works under any executor).
#[derive(Debug)]
struct Stopped {
    done: Mutex<bool>,
    changed: Condvar,
    watch: watch::Sender<bool>,
}

impl Stopped {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark(&self) {
        *self.lock() = true;
        self.changed.notify_all();
        self.watch.send_replace(true);
    }

    /// Waits until the thread has ended, or `deadline`; returns whether it has.
    fn wait(&self, deadline: Instant) -> bool {
        let mut done = self.lock();
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            done = self
                .changed
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Marks the thread ended when dropped: at its end, even one by a panic.
struct MarkOnDrop(Arc<Stopped>);

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        self.0.mark();
    }
}

/// The runtime thread, as the context holds it.
#[derive(Debug)]
pub(super) struct RuntimeThread {
    /// Spawns onto the runtime; `None` once the stop has begun.
    handle: Mutex<Option<Handle>>,
    /// Lets the thread's `block_on` return; taken by the stop sequence. Dropped unsent (a
    /// failed `init`), it lets the thread end all the same.
    release: Mutex<Option<oneshot::Sender<()>>>,
    /// The connection's task, which the stop waits for (its writer flushes).
    transport: Mutex<Option<JoinHandle<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stopped: Arc<Stopped>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RuntimeThread {
    /// Starts the thread, with nothing on its runtime yet.
    pub(super) fn start() -> Result<Self, InitError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| InitError::Runtime(e.to_string()))?;
        let handle = rt.handle().clone();
        let (release, released) = oneshot::channel::<()>();
        let stopped = Arc::new(Stopped {
            done: Mutex::new(false),
            changed: Condvar::new(),
            watch: watch::Sender::new(false),
        });
        let marker = MarkOnDrop(stopped.clone());
        let thread = std::thread::Builder::new()
            .name("shoal-runtime".into())
            .spawn(move || {
                let _marker = marker;
                if rt.block_on(released).is_err() {
                    tracing::debug!("runtime released without a shutdown (attaching failed)");
                }
                // Drops every task left: the connection, and an embedded node's tasks
                // (dropping a worker's watcher kills the worker).
                rt.shutdown_timeout(DROP_TIMEOUT);
            })
            .map_err(|e| InitError::Runtime(e.to_string()))?;
        Ok(Self {
            handle: Mutex::new(Some(handle)),
            release: Mutex::new(Some(release)),
            transport: Mutex::new(None),
            thread: Mutex::new(Some(thread)),
            stopped,
        })
    }

    /// Runs `fut` on the runtime and blocks this thread for its output (`None` if the
    /// runtime has stopped).
    pub(super) fn block_on<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = lock(&self.handle).clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
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
        if let Some(handle) = lock(&self.handle).as_ref() {
            *lock(&self.transport) = Some(handle.spawn(fut));
        }
    }

    /// A future that ends after `d`, timed on the runtime thread (so under any executor).
    /// Once the runtime has stopped it ends at once: nothing it could time is left.
    pub(super) fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel::<()>();
        if let Some(handle) = lock(&self.handle).as_ref() {
            handle.spawn(async move {
                tokio::time::sleep(d).await;
                if tx.send(()).is_err() {
                    // The waiter is gone: what it raced against finished first.
                }
            });
        }
        async move {
            if rx.await.is_err() {
                // The runtime stopped before the time was up.
            }
        }
    }

    /// Joins the thread once it has ended (at most `deadline`); returns whether it has.
    fn join(&self, deadline: Instant) -> bool {
        if !self.stopped.wait(deadline) {
            return false;
        }
        // Whoever holds the lock joins; the others wait for that.
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("the shoal runtime thread panicked");
            }
        }
        true
    }
}

impl Context {
    /// Begins the stop once: fails SDK calls from now on, and hands the rest to the runtime
    /// thread. Later calls only wait with the first.
    fn begin_shutdown(&self) {
        if !self.close_for_shutdown() {
            return;
        }
        crate::shm::forget_kept();
        let Some(handle) = lock(&self.thread.handle).take() else {
            return;
        };
        let release = lock(&self.thread.release).take();
        let transport = lock(&self.thread.transport).take();
        let node = lock(&self.node).take();
        let client = self.client;
        handle.spawn(async move {
            // The writer sends what was queued before the shutdown, then the connection ends.
            if let Some(transport) = transport {
                match tokio::time::timeout(FLUSH_TIMEOUT, transport).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "the connection's task failed"),
                    Err(_) => tracing::warn!("the connection did not close in time"),
                }
            }
            if let Some(node) = node {
                // Its workers are killed before its socket goes.
                if tokio::time::timeout(NODE_STOP_TIMEOUT, node.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("the embedded node did not stop in time");
                }
                connect::remove_peer_dir(client);
            }
            if let Some(release) = release {
                if release.send(()).is_err() {
                    // The thread has ended already: nothing to release.
                }
            }
        });
    }

    /// Stops everything (see the module header), blocking this thread at most `wait`.
    /// Returns whether the runtime thread has ended. A no-op in a worker, whose node owns
    /// its life.
    pub(crate) fn shutdown(&self, wait: Duration) -> bool {
        if self.mode == Mode::Worker {
            tracing::warn!("shoal::shutdown() in a worker does nothing: its node stops it");
            return false;
        }
        self.begin_shutdown();
        let ended = self.thread.join(Instant::now() + wait);
        if !ended {
            tracing::warn!(?wait, "the shoal runtime thread did not stop in time");
        }
        ended
    }

    /// [`Context::shutdown`] for async code: waits without blocking the executor.
    pub(crate) async fn shutdown_async(&self) {
        if self.mode == Mode::Worker {
            tracing::warn!("shoal::shutdown() in a worker does nothing: its node stops it");
            return;
        }
        self.begin_shutdown();
        let mut stopped = self.thread.stopped.watch.subscribe();
        if stopped.wait_for(|ended| *ended).await.is_err() {
            // The sender lives as long as the context: not reached.
            return;
        }
        // It has ended: joining does not block.
        self.thread.join(Instant::now());
    }
}

/// Makes the program's exit stop an embedded node the way [`Context::shutdown`] does.
/// Registered once, by the first embedded node.
/// Registers (once) an exit hook that prints the repeats of task output still held back.
pub(super) fn flush_logs_at_exit() {
    static REGISTER: Once = Once::new();
    extern "C" fn at_exit() {
        if let Some(ctx) = super::try_get() {
            ctx.logs.flush();
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function that captures nothing.
        if unsafe { libc::atexit(at_exit) } != 0 {
            tracing::warn!("cannot register the exit hook: repeated task output held back at exit is not printed");
        }
    });
}

pub(super) fn stop_at_exit() {
    static REGISTER: Once = Once::new();
    extern "C" fn at_exit() {
        if let Some(ctx) = super::try_get() {
            ctx.shutdown(SHUTDOWN_WAIT);
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function that captures nothing.
        if unsafe { libc::atexit(at_exit) } != 0 {
            tracing::warn!(
                "cannot register the exit hook: the embedded node will not be stopped at exit"
            );
        }
    });
}
