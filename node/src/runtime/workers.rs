//! Worker processes: starting them from a driver's executable, watching them, stopping them.
//!
//! A worker is the driver's own executable started with `SHOAL_WORKER_ID` and `SHOAL_SOCKET`
//! in its environment. The SDK enters worker mode from a constructor that runs before `main`
//! (so before libtest's `main` in test binaries, and before any user code), connects back to
//! the node and announces its id. Which tasks it runs is the scheduler's business; this
//! module only owns the processes. Workers of code shipped by peers run sandboxed: see
//! [`super::sandbox`].

use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use std::time::Duration;

use shoal_protocol::ExitInfo;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::output::Output;
use super::sandbox::{self, Sandbox, SandboxError};
use super::Event;
use crate::core::sched::WorkerId;
use crate::core::WorkerEnd;

/// The environment a worker is started with: its id (whose presence means "worker mode"),
/// its binary's id and the node's socket. Defined by the protocol, which the SDK reads it from.
pub use shoal_protocol::env::{
    BINARY_ID as ENV_BINARY, SOCKET as ENV_SOCKET, SOCKET_FD as ENV_SOCKET_FD,
    WORKER_ID as ENV_WORKER_ID,
};

/// A running worker process. Dropping it stops the process (as [`WorkerProcess::kill`]
/// does); the watcher returned by [`spawn`] reports its end.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its pid.
    pub pid: u32,
    kill: Option<oneshot::Sender<Option<Oom>>>,
    /// Its stdout and stderr, when the node reads them.
    pub output: Option<Arc<Output>>,
}

/// Why the node killed a worker for memory: the limit it hit and what it used, in bytes.
pub type Oom = (u64, u64);

impl WorkerProcess {
    /// Asks the process to stop (SIGKILL); its exit is reported by its watcher as usual.
    pub fn kill(&mut self) {
        self.send_kill(None);
    }

    /// Kills the process because memory is nearly full (see
    /// [`super::sandbox::MemoryMonitor`]); its end is reported as
    /// [`WorkerEnd::OutOfMemory`] with `limit` and `used`.
    pub fn kill_for_memory(&mut self, limit: u64, used: u64) {
        self.send_kill(Some((limit, used)));
    }

    /// Whether a kill was asked for already.
    pub fn dying(&self) -> bool {
        self.kill.is_none()
    }

    fn send_kill(&mut self, reason: Option<Oom>) {
        if let Some(tx) = self.kill.take() {
            if tx.send(reason).is_err() {
                tracing::debug!(pid = self.pid, "worker already ended");
            }
        }
    }
}

/// Converts an exit status for error messages.
pub fn exit_info(status: ExitStatus) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
    }
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process (or its socket) could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Its sandbox could not be made.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// A started worker: the process, its watcher (a future that ends with the process, killing
/// it if its [`WorkerProcess`] asks to, or if the watcher is dropped, with how it ended), and
/// for a sandboxed worker the node's end of its connection (see
/// [`crate::api::serve_inherited`]).
pub type Started<W> = (WorkerProcess, W, Option<StdUnixStream>);

/// How long a worker's output is still read after it exited (what it wrote last may still
/// be in the pipe; a process it left behind may hold the pipe open for ever).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Starts worker `id` from `exe`. Without `sandbox`, it runs as the node's user and connects
/// to `socket`; with it, it runs sandboxed (see [`super::sandbox`]) and talks to the node
/// over an inherited socket whose other end is returned. With `output`, its stdout and
/// stderr are read line by line into it (see [`Output`]); without, they are the node's.
/// `env` are its tasks' environment variables (checked by the core: no `SHOAL_*`, `LD_*`,
/// `DYLD_*`); a sandbox's own `HOME` and `TMPDIR` are kept.
pub fn spawn(
    id: WorkerId,
    binary: shoal_protocol::BinaryId,
    exe: &Path,
    env: &[(String, String)],
    socket: &Path,
    sandbox: Option<&Sandbox>,
    output: Option<mpsc::Sender<Event>>,
) -> Result<Started<impl Future<Output = WorkerEnd> + Send + 'static>, SpawnError> {
    let mut cmd;
    let mut node_end = None;
    let mut cleanup = None;
    // Kept open until the child has exec'd.
    let mut held: Option<(std::fs::File, StdUnixStream, Option<std::os::fd::OwnedFd>)> = None;
    match sandbox {
        None => {
            cmd = tokio::process::Command::new(exe);
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            cmd.env(ENV_SOCKET, socket);
        }
        Some(sandbox) => {
            let prepared = sandbox.prepare(id)?;
            let opened = (|| -> std::io::Result<_> {
                let (ours, theirs) = StdUnixStream::pair()?;
                let file = sandbox::open_exe(exe)?;
                let procs = prepared
                    .cgroup
                    .as_ref()
                    .map(|c| c.open_procs())
                    .transpose()?;
                Ok((ours, theirs, file, procs))
            })();
            let (ours, theirs, file, procs) = match opened {
                Ok(o) => o,
                Err(e) => {
                    discard(prepared.workdir, prepared.cgroup);
                    return Err(e.into());
                }
            };
            cmd = tokio::process::Command::new(sandbox::proc_fd_path(&file));
            cmd.env_clear();
            for key in ["PATH", "RUST_LOG", "RUST_BACKTRACE", "NO_COLOR"] {
                if let Some(v) = std::env::var_os(key) {
                    cmd.env(key, v);
                }
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            let fd = theirs.as_raw_fd();
            cmd.env("HOME", &prepared.workdir)
                .env("TMPDIR", &prepared.workdir)
                .env(ENV_SOCKET_FD, fd.to_string())
                .current_dir(&prepared.workdir);
            let setup = prepared.child_setup(procs.as_ref(), fd);
            // SAFETY: the hook makes system calls only (see `Prepared::child_setup`).
            unsafe {
                cmd.pre_exec(setup);
            }
            node_end = Some(ours);
            held = Some((file, theirs, procs));
            cleanup = Some((prepared.workdir, prepared.cgroup, prepared.rlimit));
        }
    }
    cmd.env(ENV_WORKER_ID, id.to_string())
        .env(ENV_BINARY, binary.to_hex())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let captured = match output {
        Some(events) => match Output::new(id) {
            Ok((captured, [out, err])) => {
                cmd.stdout(out).stderr(err);
                Some((captured, events))
            }
            Err(e) => {
                if let Some((workdir, cgroup, _)) = cleanup {
                    discard(workdir, cgroup);
                }
                return Err(e.into());
            }
        },
        None => {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            None
        }
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some((workdir, cgroup, _)) = cleanup {
                discard(workdir, cgroup);
            }
            return Err(e.into());
        }
    };
    drop(held);
    // Its copies of the pipes' write ends: the reader sees their end once the worker's are
    // closed.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    let (kill_tx, mut kill_rx) = oneshot::channel::<Option<Oom>>();
    let span = tracing::info_span!("worker", worker = id, pid, exe = %exe.display(), sandboxed = cleanup.is_some());
    let output = captured.as_ref().map(|(o, _)| o.clone());
    let watcher = async move {
        tracing::debug!("worker started");
        let reading = async move {
            if let Some((output, events)) = captured {
                output.read(events).await;
            }
        };
        tokio::pin!(reading);
        let mut read_all = false;
        let waiting = async {
            tokio::select! {
                status = child.wait() => (status, None),
                reason = &mut kill_rx => {
                    if let Err(e) = child.start_kill() {
                        tracing::debug!(error = %e, "worker ended before the kill");
                    }
                    (child.wait().await, reason.ok().flatten())
                }
            }
        };
        tokio::pin!(waiting);
        let (status, killed_for) = loop {
            tokio::select! {
                ended = &mut waiting => break ended,
                () = &mut reading, if !read_all => read_all = true,
            }
        };
        if !read_all
            && tokio::time::timeout(OUTPUT_GRACE, &mut reading)
                .await
                .is_err()
        {
            tracing::debug!("a worker's output is still open after it exited; no longer read");
        }
        let exit = match status {
            Ok(s) => exit_info(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for worker");
                ExitInfo {
                    code: None,
                    signal: None,
                }
            }
        };
        // The cgroup tells whether the kernel killed it for its limit; then it goes.
        let oom = match cleanup {
            None => None,
            // Under RLIMIT_DATA an allocation fails instead, and a Rust program aborts on
            // that: the best guess for an abort is the limit (an abort of another cause is
            // reported so too).
            Some((workdir, None, Some(limit))) => {
                let removed = tokio::task::spawn_blocking(move || discard(workdir, None)).await;
                if let Err(e) = removed {
                    tracing::error!(error = %e, "cleaning up after a worker failed");
                }
                (exit.signal == Some(libc::SIGABRT)).then_some((limit, limit))
            }
            Some((workdir, cgroup, _)) => {
                let removed = tokio::task::spawn_blocking(move || {
                    let oom = cgroup.as_ref().and_then(|c| Some((c.limit(), c.oom()?)));
                    discard(workdir, cgroup);
                    oom
                });
                match removed.await {
                    Ok(oom) => oom,
                    Err(e) => {
                        tracing::error!(error = %e, "cleaning up after a worker failed");
                        None
                    }
                }
            }
        };
        match killed_for.or(oom) {
            Some((limit, used)) => {
                tracing::warn!(%exit, limit, used, "worker killed for memory");
                WorkerEnd::OutOfMemory { pid, limit, used }
            }
            None => {
                tracing::debug!(%exit, "worker ended");
                WorkerEnd::Exited { pid, exit }
            }
        }
    }
    .instrument(span);
    Ok((
        WorkerProcess {
            pid,
            kill: Some(kill_tx),
            output,
        },
        watcher,
        node_end,
    ))
}

/// Removes a sandboxed worker's cgroup and working directory.
fn discard(workdir: PathBuf, cgroup: Option<sandbox::Cgroup>) {
    if let Some(c) = cgroup {
        c.remove();
    }
    sandbox::remove_workdir(&workdir);
}
