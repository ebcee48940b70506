//! Worker processes: starting them from a driver's executable, watching them, stopping them.
//!
//! A worker is the driver's own executable started with `SHOAL_WORKER_ID` and `SHOAL_SOCKET`
//! in its environment. The SDK enters worker mode from a constructor that runs before `main`
//! (so before libtest's `main` in test binaries, and before any user code), connects back to
//! the node and announces its id. Which tasks it runs is the scheduler's business; this
//! module only owns the processes.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use shoal_protocol::ExitInfo;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::core::sched::WorkerId;

/// The environment a worker is started with: its id (whose presence means "worker mode"),
/// its binary's id and the node's socket. Defined by the protocol, which the SDK reads it from.
pub use shoal_protocol::env::{
    BINARY_ID as ENV_BINARY, SOCKET as ENV_SOCKET, WORKER_ID as ENV_WORKER_ID,
};

/// A running worker process. Dropping it does not stop the process: [`WorkerProcess::kill`]
/// does, and the watcher returned by [`spawn`] reports its end.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its pid.
    pub pid: u32,
    kill: Option<oneshot::Sender<()>>,
}

impl WorkerProcess {
    /// Asks the process to stop (SIGKILL); its exit is reported by its watcher as usual.
    pub fn kill(&mut self) {
        if let Some(tx) = self.kill.take() {
            if tx.send(()).is_err() {
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

/// Starts worker `id` from `exe`. Returns the process and its watcher: a future that ends
/// with the process (killing it if its [`WorkerProcess`] asks to, or if the watcher is
/// dropped), with how it ended.
pub fn spawn(
    id: WorkerId,
    binary: shoal_protocol::BinaryId,
    exe: &Path,
    socket: &Path,
) -> std::io::Result<(
    WorkerProcess,
    impl Future<Output = ExitInfo> + Send + 'static,
)> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.env(ENV_WORKER_ID, id.to_string())
        .env(ENV_BINARY, binary.to_hex())
        .env(ENV_SOCKET, socket)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let (kill_tx, mut kill_rx) = oneshot::channel();
    let span = tracing::info_span!("worker", worker = id, pid, exe = %exe.display());
    let watcher = async move {
        tracing::debug!("worker started");
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut kill_rx => {
                if let Err(e) = child.start_kill() {
                    tracing::debug!(error = %e, "worker ended before the kill");
                }
                child.wait().await
            }
        };
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
        tracing::debug!(%exit, "worker ended");
        exit
    }
    .instrument(span);
    Ok((
        WorkerProcess {
            pid,
            kill: Some(kill_tx),
        },
        watcher,
    ))
}
