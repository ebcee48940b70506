//! Worker processes: starting them from a driver's executable, watching them, stopping them.
//!
//! A worker is the driver's own executable started with `SHOAL_WORKER_ID` and `SHOAL_SOCKET`
//! in its environment. The SDK enters worker mode from a constructor that runs before `main`
//! (so before libtest's `main` in test binaries, and before any user code), connects back to
//! the node and announces its id. Which tasks it runs is the scheduler's business; this
//! module only owns the processes.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use shoal_protocol::ExitInfo;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::node::Event;
use crate::sched::WorkerId;

/// The environment a worker is started with: its id (whose presence means "worker mode"),
/// its binary's id and the node's socket. Defined by the protocol, which the SDK reads it from.
pub use shoal_protocol::env::{
    BINARY_ID as ENV_BINARY, SOCKET as ENV_SOCKET, WORKER_ID as ENV_WORKER_ID,
};

/// A running worker process: dropping it kills the process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its pid.
    pub pid: u32,
    kill: Option<oneshot::Sender<()>>,
}

impl WorkerProcess {
    /// Asks the process to stop (SIGKILL); its exit is reported as usual.
    pub fn kill(&mut self) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(());
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

/// Starts worker `id` from `exe`; when it ends, [`Event::WorkerExited`] goes to `events`.
pub fn spawn(
    id: WorkerId,
    binary: shoal_protocol::BinaryId,
    exe: &Path,
    socket: &Path,
    events: mpsc::Sender<Event>,
) -> std::io::Result<WorkerProcess> {
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
    tokio::spawn(
        async move {
            tracing::debug!("worker started");
            let status = tokio::select! {
                status = child.wait() => status,
                _ = &mut kill_rx => {
                    let _ = child.start_kill();
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
            let _ = events
                .send(Event::WorkerExited {
                    worker: id,
                    pid,
                    exit,
                })
                .await;
        }
        .instrument(span),
    );
    Ok(WorkerProcess {
        pid,
        kill: Some(kill_tx),
    })
}
