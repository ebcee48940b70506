//! Child processes and directories that clean up after themselves, and what `/proc` says about
//! a pid.
//!
//! - [`KillOnDrop`] owns a child process: dropping it kills (SIGKILL) and reaps *that* child,
//!   by its handle. It is the only guard of a child process in the workspace's tests and
//!   benchmarks; [`crate::NodeProcess`] keeps its node in one.
//! - [`TestDir`] is a fresh directory removed on drop (kept with `$SHOAL_TESTS_KEEP`).
//! - [`pid_alive`], [`parent_of`] and [`cmdline`] read `/proc/<pid>`.
//! - [`run_with_timeout`] runs a command to its end, killing it if it takes too long.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Set (to anything) to keep the directories of [`TestDir`]s and nodes when their guards drop:
/// for looking into a failure.
pub const KEEP_ENV: &str = "SHOAL_TESTS_KEEP";

/// How often [`KillOnDrop`] looks whether its child has exited while waiting for it.
const EXIT_POLL: Duration = Duration::from_millis(2);

/// Owns a child process: kills it with SIGKILL and reaps it when dropped, however the test or
/// benchmark ends.
///
/// It only ever signals its own child: by the [`Child`] handle (which does nothing once the
/// child is reaped, so a recycled pid is safe), or by pid while the child is known not to be
/// reaped yet ([`KillOnDrop::signal`]). Never a process found by name.
#[derive(Debug)]
pub struct KillOnDrop {
    child: Child,
    /// What the child is, for error messages ("the echo child").
    what: String,
    /// Cleared by [`KillOnDrop::release`]: the process is left running.
    armed: bool,
}

impl KillOnDrop {
    /// Guards `child`, named by its pid in error messages.
    pub fn new(child: Child) -> Self {
        let what = format!("child process {}", child.id());
        Self::named(what, child)
    }

    /// Guards `child`, called `what` in error messages.
    pub fn named(what: impl Into<String>, child: Child) -> Self {
        Self {
            child,
            what: what.into(),
            armed: true,
        }
    }

    /// Spawns `command` and guards the child, called `what` in error messages.
    pub fn spawn(what: impl Into<String>, command: &mut Command) -> Result<Self> {
        let what = what.into();
        let child = command
            .spawn()
            .with_context(|| format!("spawning the {what}: {command:?}"))?;
        Ok(Self::named(what, child))
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child is, as given to [`KillOnDrop::named`] or [`KillOnDrop::spawn`].
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The child, e.g. to take its piped stdin or stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("waiting for the {}", self.what))
    }

    /// Kills the child with SIGKILL and reaps it; returns how it ended (which is not
    /// necessarily by the signal, if it had exited before).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        // `Child::kill` signals this very child, and does nothing once it is reaped.
        self.child
            .kill()
            .with_context(|| format!("killing the {}", self.what))?;
        self.child
            .wait()
            .with_context(|| format!("reaping the {}", self.what))
    }

    /// Sends `signal` to the child. Fails, signalling nothing, if it has already exited (its
    /// pid may then be another process's).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!(
                "the {} already exited ({status}); not signalling a pid that may be reused",
                self.what
            );
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
        if unsafe { libc::kill(pid, signal) } == -1 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({pid}, {signal}) of the {}", self.what));
        }
        Ok(())
    }

    /// Waits at most `timeout` for the child to exit; its status, or `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// An error if the child has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the {} exited early: {status}", self.what),
        }
    }

    /// Waits at most `timeout` for the child to exit by itself (as it should, say, once its
    /// input is closed) and checks that it succeeded. An error otherwise; the child is then
    /// killed as this guard drops.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        match self.wait_timeout(timeout)? {
            Some(status) => {
                ensure!(status.success(), "the {} failed: {status}", self.what);
                Ok(())
            }
            None => bail!("the {} did not exit within {timeout:?}", self.what),
        }
    }

    /// Lets the child outlive this guard (and this process): nothing is killed or reaped on
    /// drop. Returns its pid.
    pub fn release(mut self) -> u32 {
        self.armed = false;
        self.pid()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // Nothing to do about a failure here: the child is gone or was never ours to wait.
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// A fresh directory, named `<prefix>-<pid>-<n>`, removed with everything in it on drop
/// (unless `$SHOAL_TESTS_KEEP` is set).
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new directory in the temporary directory. Panics if it cannot be made (for tests).
    pub fn new(prefix: &str) -> Self {
        Self::create_in(&std::env::temp_dir(), prefix)
            .unwrap_or_else(|e| panic!("making a test directory: {e:#}"))
    }

    /// A new directory in `parent`.
    pub fn create_in(parent: &Path, prefix: &str) -> Result<Self> {
        Ok(Self {
            path: fresh_dir(parent, prefix)?,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` inside it.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.path.join(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_none() {
            // A directory left behind in the temporary directory is no reason to panic.
            std::fs::remove_dir_all(&self.path).ok();
        }
    }
}

/// Makes a new directory `<parent>/<prefix>-<pid>-<n>`, with the first `n` not taken.
pub(crate) fn fresh_dir(parent: &Path, prefix: &str) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{prefix}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with the same pid: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

/// Field `n` of `/proc/<pid>/stat` after the command name (0 is the state, 1 the parent pid);
/// `None` if there is no such process.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything, `)` and spaces included.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// Whether `pid` is a live process. A zombie is not: it has exited and waits to be reaped.
pub fn pid_alive(pid: u32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z" && state != "X")
}

/// The parent pid of `pid`, from `/proc`; `None` if there is no such process.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// The command line of `pid`, from `/proc/<pid>/cmdline` (empty if it is gone).
pub fn cmdline(pid: u32) -> Vec<OsString> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| OsStr::from_bytes(a).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `command` with stdin closed and its stdout and stderr captured, killing it if it runs
/// longer than `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop::spawn(format!("{command:?}"), command)?;
    // Read both pipes while waiting, so a large output cannot block the child.
    let out = read_in_thread(child.child_mut().stdout.take().context("stdout is piped")?);
    let err = read_in_thread(child.child_mut().stderr.take().context("stderr is piped")?);
    let Some(status) = child.wait_timeout(timeout)? else {
        // Dropping the guard kills and reaps it; the reader threads then see end-of-file.
        bail!("{command:?} did not finish within {timeout:?}");
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end in a thread of its own; joining the thread gives what was read (all
/// there is, if reading failed half-way).
fn read_in_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // What was read before an error is all there is.
        pipe.read_to_end(&mut buf).ok();
        buf
    })
}
