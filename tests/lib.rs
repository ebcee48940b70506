//! Real `shoal` node processes for tests and for `scripts/mesh`.
//!
//! The cross-crate tests live in `tests/tests/` (helpers shared by them in `tests/tests/support`);
//! this library is what they, and the `shoal-mesh` tool behind `scripts/mesh`, use to start
//! and watch real node processes on loopback:
//!
//! - [`NodeProcess`] starts one `shoal node` in a directory of its own (socket, store, spill
//!   directory, data directory with the identity key, and `node.log` with its stdout and
//!   stderr) and waits until it answers `shoal status --json` and listens. It is a guard:
//!   dropping it kills *its own* child with SIGKILL, reaps it and removes the directory. It
//!   can be killed ([`NodeProcess::kill_9`]) and restarted with the same directory, so the same
//!   identity ([`NodeProcess::restart`]), or handed over as a [`DetachedNode`] that outlives
//!   this process ([`NodeProcess::detach`]).
//! - [`Mesh`] starts N of them, the first one alone and the others bootstrapped from it
//!   (`--peer <node 0's address>`), and waits on the peers' views: converged
//!   ([`Mesh::wait_converged`]), a peer gone from every view ([`Mesh::wait_gone`]), or any
//!   condition ([`Mesh::wait_views`]).
//! - [`status_json`], [`peers_json`] and [`view`] ask a node how it sees the mesh; everything
//!   that waits polls with a deadline ([`wait_for`]): nothing here sleeps in place of a check,
//!   and nothing waits forever (even the `shoal status` client is killed if it hangs).
//! - [`stop_node`] and friends stop a node that is not our child (the script's `down`), by pid,
//!   and only after `/proc/<pid>/cmdline` shows it is still the `shoal node` on the recorded
//!   socket, so a recycled pid is never signalled.
//!
//! - [`shoal_bin`] finds the binary: `$SHOAL_BIN`, else the `shoal` beside the running
//!   executable. `cargo test --workspace` builds it; with `cargo test -p shoal-tests`, run
//!   `cargo build -p shoal-node --bin shoal` first.
//!
//! Errors carry the tail of the node's log, which is usually what explains a failure.
//!
//! Every node is started with `--no-mdns` (a test mesh must not pick up peers of the LAN or of
//! other tests) and, unless told otherwise ([`NodeOptions`]), listens on
//! `/ip4/127.0.0.1/tcp/0`, has 1 CPU and a 64 MiB store inside its own directory, and logs
//! without colour codes (`NO_COLOR=1`; `RUST_LOG` is passed on).
//!
//! ```no_run
//! use std::time::Duration;
//! use shoal_tests::Mesh;
//!
//! let mesh = Mesh::start(3, "example")?;
//! let took = mesh.wait_converged(Duration::from_secs(20))?;
//! println!("3 nodes converged in {took:?}; node 0 is {}", mesh.node(0).peer_id());
//! # anyhow::Ok(())
//! ```

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How often the waits here poll.
pub const POLL: Duration = Duration::from_millis(50);

/// How long a node may take to answer on its socket and listen, by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `shoal status` (or `shoal peers`) may take before it is killed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a node's log quoted in an error message, in lines.
const LOG_TAIL_LINES: usize = 40;

/// Set (to anything) to keep each node's directory, log included, when its guard drops:
/// for looking into a failed test.
pub const KEEP_ENV: &str = "SHOAL_TESTS_KEEP";

/// The file each node's stdout and stderr go to, in its directory.
pub const LOG_FILE: &str = "node.log";

/// The `shoal` binary.
///
/// `$SHOAL_BIN` if set, else the `shoal` next to the running executable: `target/<profile>/`
/// for a binary such as `shoal-mesh`, and the same directory for test binaries, which run from
/// `target/<profile>/deps/`. Cargo builds it there for `cargo test --workspace` or
/// `cargo build -p shoal-node --bin shoal`.
pub fn shoal_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SHOAL_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("where is this executable?")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().unwrap_or(dir);
    }
    let bin = dir.join("shoal");
    if !bin.exists() {
        bail!(
            "{} missing: build it with `cargo build -p shoal-node --bin shoal` (add --release \
             for a release build) or run `cargo test --workspace`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A TCP port on 127.0.0.1 that was free a moment ago: for a node that must listen on the
/// same address after a restart (`/ip4/127.0.0.1/tcp/<port>`). Another process may take it
/// in between; ephemeral ports (`tcp/0`) are better wherever they do.
pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `command` with stdin closed and its stdout and stderr captured, killing it if it runs
/// longer than `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    // Read both pipes while waiting, so a large output cannot block the child.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `shoal <args>` and parses its stdout as one JSON value.
fn shoal_json(args: &[&OsStr]) -> Result<Value> {
    let mut command = Command::new(shoal_bin()?);
    command.args(args);
    let out = run_with_timeout(&mut command, CLI_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{command:?} printed something other than JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `shoal status --json --socket <socket>`: the node's own state and its view of the mesh.
pub fn status_json(socket: &Path) -> Result<Value> {
    shoal_json(&[
        OsStr::new("status"),
        OsStr::new("--json"),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ])
}

/// `shoal peers --json --socket <socket>`: the other peers in the node's view.
pub fn peers_json(socket: &Path) -> Result<Value> {
    shoal_json(&[
        OsStr::new("peers"),
        OsStr::new("--json"),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ])
}

/// The peer ids in a node's view: `peers[*].peer_id` of a `status --json` object.
pub fn view(status: &Value) -> BTreeSet<String> {
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["peer_id"].as_str().map(str::to_owned))
        .collect()
}

/// Calls `check` every [`POLL`] until it returns `Some`, and returns that with how long it
/// took. After `timeout` it gives up with an error naming `what` and the last error `check`
/// returned, if any (errors are taken as "not yet").
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok((v, start.elapsed())),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The last `lines` lines of the file at `path` (at most its last 16 KiB), or a note saying why
/// there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// What to start a node with. [`NodeOptions::default`] is a node of mesh `default` with 1 CPU
/// and a 64 MiB store, listening on `/ip4/127.0.0.1/tcp/0`, in a fresh temporary directory.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// `--mesh`.
    pub mesh: String,
    /// `--cpus`.
    pub cpus: f64,
    /// `--store-bytes`.
    pub store_bytes: u64,
    /// `--listen` (each).
    pub listen: Vec<String>,
    /// `--peer` (each): bootstrap addresses, ending in `/p2p/<peer id>`.
    pub peers: Vec<String>,
    /// `--failure-timeout` in seconds, if not the node's default.
    pub failure_timeout: Option<f64>,
    /// More arguments for `shoal node`, after the others.
    pub extra_args: Vec<OsString>,
    /// More environment variables for the node (it inherits this process's, `RUST_LOG`
    /// included).
    pub env: Vec<(OsString, OsString)>,
    /// The node's directory; it must not exist yet, or be empty. Default: a new directory
    /// `shoal-node-<pid>-<n>` in the temporary directory.
    pub dir: Option<PathBuf>,
    /// Start the node in a session of its own, so it outlives this process's terminal and
    /// never gets the terminal's Ctrl-C (for [`NodeProcess::detach`]ed nodes).
    pub new_session: bool,
    /// How long it may take to answer on its socket and listen.
    pub startup_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            mesh: "default".into(),
            cpus: 1.0,
            store_bytes: 64 << 20,
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            peers: Vec::new(),
            failure_timeout: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            dir: None,
            new_session: false,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl NodeOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mesh name.
    pub fn mesh(mut self, name: impl Into<String>) -> Self {
        self.mesh = name.into();
        self
    }

    /// Sets the CPU count.
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.cpus = cpus;
        self
    }

    /// Adds a bootstrap peer address.
    pub fn peer(mut self, addr: impl Into<String>) -> Self {
        self.peers.push(addr.into());
        self
    }

    /// Sets the failure timeout, in seconds.
    pub fn failure_timeout(mut self, secs: f64) -> Self {
        self.failure_timeout = Some(secs);
        self
    }

    /// Adds an argument for `shoal node`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Adds an environment variable for the node.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the node's directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
}

/// Makes a new, empty directory for a node: `dir` if given (it may exist if empty), else a
/// fresh one in the temporary directory.
fn make_node_dir(dir: Option<&Path>) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if std::fs::read_dir(dir)?.next().is_some() {
            bail!("{} is not empty; not starting a node in it", dir.display());
        }
        return Ok(dir.to_owned());
    }
    let tmp = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("shoal-node-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with the same pid: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

/// One `shoal node` process, our child, in a directory of its own. Dropping it kills the
/// process (SIGKILL), reaps it and removes the directory (unless `$SHOAL_TESTS_KEEP` is set);
/// [`NodeProcess::detach`] keeps both.
///
/// Directory layout: `node.sock` (the API socket), `store/`, `spill/`, `data/` (the identity
/// key: the same directory means the same peer id), and `node.log` (stdout and stderr of every
/// run, appended).
#[derive(Debug)]
pub struct NodeProcess {
    /// The running process, `None` once killed.
    child: Option<Child>,
    /// The pid of the latest run.
    pid: u32,
    dir: PathBuf,
    /// What every run is started with.
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    new_session: bool,
    startup_timeout: Duration,
    mesh: String,
    /// From the latest run's `status --json`.
    peer_id: String,
    listen_addrs: Vec<String>,
    /// Whether dropping this removes the directory.
    remove_dir: bool,
}

impl NodeProcess {
    /// Starts a node and waits until it answers `status --json` and listens.
    pub fn start(options: NodeOptions) -> Result<Self> {
        let mut node = Self::spawn(options)?;
        node.wait_ready()?;
        Ok(node)
    }

    /// Starts a node without waiting for it; call [`NodeProcess::wait_ready`] before using
    /// its peer id or addresses. Lets several nodes start at once.
    pub fn spawn(options: NodeOptions) -> Result<Self> {
        let dir = make_node_dir(options.dir.as_deref())?;
        let dir = dir.canonicalize().unwrap_or(dir);
        let socket = dir.join("node.sock");
        // sun_path holds 108 bytes, with the terminating NUL.
        if socket.as_os_str().len() >= 108 {
            let _ = std::fs::remove_dir_all(&dir);
            bail!(
                "{} is too long for a Unix socket path: use a shorter TMPDIR",
                socket.display()
            );
        }
        for sub in ["store", "spill", "data"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut args: Vec<OsString> = vec!["node".into(), "--socket".into(), socket.into()];
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--store-dir", dir.join("store").into());
        push("--spill-dir", dir.join("spill").into());
        push("--data-dir", dir.join("data").into());
        push("--store-bytes", options.store_bytes.to_string().into());
        push("--cpus", options.cpus.to_string().into());
        push("--mesh", options.mesh.clone().into());
        for l in &options.listen {
            push("--listen", l.into());
        }
        for p in &options.peers {
            push("--peer", p.into());
        }
        if let Some(t) = options.failure_timeout {
            push("--failure-timeout", t.to_string().into());
        }
        args.push("--no-mdns".into());
        args.extend(options.extra_args.iter().cloned());
        let mut node = Self {
            child: None,
            pid: 0,
            dir,
            args,
            env: options.env,
            new_session: options.new_session,
            startup_timeout: options.startup_timeout,
            mesh: options.mesh,
            peer_id: String::new(),
            listen_addrs: Vec::new(),
            remove_dir: true,
        };
        node.spawn_child()?;
        Ok(node)
    }

    /// Starts a run of the node process, its output appended to the log.
    fn spawn_child(&mut self) -> Result<()> {
        debug_assert!(self.child.is_none());
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "=== shoal-tests: starting {:?}", self.args)?;
        let mut command = Command::new(shoal_bin()?);
        command
            .args(&self.args)
            // A node's socket is the one on its command line, never the caller's.
            .env_remove("SHOAL_SOCKET")
            // A log file, not a terminal: no colour codes (`tracing-subscriber` honours it).
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.new_session {
            // SAFETY: setsid is async-signal-safe and touches no memory of this process.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.pid = child.id();
        self.child = Some(child);
        self.peer_id.clear();
        self.listen_addrs.clear();
        Ok(())
    }

    /// Waits until the node answers `status --json` with its own pid, a peer id and at least
    /// one listen address. Fails early if the process exits.
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            if let Some(status) = self.child_mut()?.try_wait()? {
                self.child = None;
                bail!(self.with_log(format!(
                    "node {} exited during start-up: {status}",
                    self.pid
                )));
            }
            let not_yet = match status_json(&self.socket()) {
                Ok(status) => {
                    if status["pid"].as_u64() != Some(u64::from(self.pid)) {
                        bail!(self.with_log(format!(
                            "another process answers on {}: {status}",
                            self.socket().display()
                        )));
                    }
                    let addrs: Vec<String> = status["listen_addrs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    match status["peer_id"].as_str() {
                        Some(id) if !id.is_empty() && !addrs.is_empty() => {
                            self.peer_id = id.to_owned();
                            self.listen_addrs = addrs;
                            return Ok(());
                        }
                        _ => format!("not listening yet: {status}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(self.with_log(format!(
                    "node {} not ready within {:?}: {not_yet}",
                    self.pid, self.startup_timeout
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn child_mut(&mut self) -> Result<&mut Child> {
        let pid = self.pid;
        self.child
            .as_mut()
            .ok_or_else(|| anyhow!("node {pid} is not running"))
    }

    /// `message`, followed by the tail of the node's log.
    pub fn with_log(&self, message: impl std::fmt::Display) -> String {
        format!(
            "{message}\n--- last lines of {} ---\n{}\n---",
            self.log_path().display(),
            log_tail(&self.log_path(), LOG_TAIL_LINES)
        )
    }

    /// The node's `status --json`, or an error carrying the tail of its log.
    pub fn try_status(&self) -> Result<Value> {
        status_json(&self.socket()).map_err(|e| anyhow!(self.with_log(format!("{e:#}"))))
    }

    /// The node's `status --json`. Panics (with the tail of the log) if it does not answer.
    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The node's `peers --json`, or an error carrying the tail of its log.
    pub fn try_peers(&self) -> Result<Value> {
        peers_json(&self.socket()).map_err(|e| anyhow!(self.with_log(format!("{e:#}"))))
    }

    /// The peer ids this node sees.
    pub fn view(&self) -> Result<BTreeSet<String>> {
        Ok(view(&self.try_status()?))
    }

    /// Its peer id (as of the latest run's start).
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Its first listen address (`/ip4/…/tcp/…/p2p/<peer id>`), a `--peer` value for others.
    pub fn listen_addr(&self) -> &str {
        self.listen_addrs.first().map_or("", String::as_str)
    }

    /// All its listen addresses, as of the latest run's start.
    pub fn listen_addrs(&self) -> &[String] {
        &self.listen_addrs
    }

    /// Its API socket: `SHOAL_SOCKET` for a program that should use this node.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("node.sock")
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log: stdout and stderr of every run.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Its mesh name.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The pid of the latest run (which may have ended).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Kills the process with SIGKILL and reaps it. Nothing happens if it is not running.
    pub fn kill_9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL to this very child (and is a no-op once reaped).
            child.kill().context("SIGKILL")?;
            child.wait().context("reaping the node")?;
        }
        Ok(())
    }

    /// Starts the node again with the same arguments and directory, so the same identity,
    /// after killing it with SIGKILL if it is still running; waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.kill_9()?;
        self.spawn_child()?;
        self.wait_ready()
    }

    /// Lets the process and its directory outlive this value (and this process): for
    /// `scripts/mesh up`. Start such nodes with [`NodeOptions::new_session`].
    pub fn detach(mut self) -> DetachedNode {
        // Dropping a `Child` neither kills nor waits for it.
        self.child = None;
        self.remove_dir = false;
        self.describe()
    }

    /// What a [`DetachedNode`] of this node would record (the node stays attached).
    pub fn describe(&self) -> DetachedNode {
        DetachedNode {
            pid: self.pid,
            socket: self.socket(),
            dir: self.dir.clone(),
            log: self.log_path(),
            mesh: self.mesh.clone(),
            peer_id: self.peer_id.clone(),
            addrs: self.listen_addrs.clone(),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Only our own child, by its handle: never a process found by name.
        let _ = self.kill_9();
        if self.remove_dir && std::env::var_os(KEEP_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A node started by [`NodeProcess`] and detached from it: what `scripts/mesh` records of each
/// node in its state file. Not a guard: dropping it does nothing; [`stop_node`] stops it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetachedNode {
    /// Its pid.
    pub pid: u32,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its directory (socket, store, spill, data, log).
    pub dir: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Its mesh name.
    pub mesh: String,
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub addrs: Vec<String>,
}

impl DetachedNode {
    /// Whether the process is still this node: alive, and still `shoal node --socket
    /// <socket>` (so not a recycled pid).
    pub fn is_alive(&self) -> bool {
        is_shoal_node(self.pid, &self.socket)
    }

    /// Its `status --json`.
    pub fn status(&self) -> Result<Value> {
        status_json(&self.socket)
    }
}

/// Whether `pid` is a live process (a zombie is not: it has exited and waits to be reaped).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which is in parentheses.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X") | None
        ),
        Err(_) => false,
    }
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

/// Whether `pid` is a live `shoal node` process serving `socket`: its program is named
/// `shoal`, its first argument is `node`, and it has `--socket <socket>`.
pub fn is_shoal_node(pid: u32, socket: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let args = cmdline(pid);
    let program_is_shoal = args
        .first()
        .and_then(|p| Path::new(p).file_name())
        .is_some_and(|name| name == "shoal");
    let socket_arg = args.windows(2).any(|w| {
        w[0] == "--socket" && Path::new(&w[1]) == socket
            || w[0].as_bytes().strip_prefix(b"--socket=") == Some(socket.as_os_str().as_bytes())
    });
    program_is_shoal && args.get(1).is_some_and(|a| a == "node") && socket_arg
}

/// How [`stop_node`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (or its pid is now another program's, which was left alone).
    NotRunning,
    /// It exited after SIGTERM.
    Terminated,
    /// It was still running after the grace time and was killed with SIGKILL.
    Killed,
}

/// Sends `signal` to `pid` if it still is the `shoal node` on `socket`. Returns whether it was
/// sent.
fn signal_node(pid: u32, socket: &Path, signal: libc::c_int) -> Result<bool> {
    if !is_shoal_node(pid, socket) {
        return Ok(false);
    }
    let pid_t = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid_t, signal) } == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        return Err(e).with_context(|| format!("signalling {pid}"));
    }
    Ok(true)
}

/// Stops the `shoal node` with `pid` serving `socket`, a process that need not be our child:
/// SIGTERM, then SIGKILL if it still runs after `grace`; waits until it is gone. Signals
/// nothing unless `/proc/<pid>/cmdline` still shows that node, so a recycled pid is safe.
pub fn stop_node(pid: u32, socket: &Path, grace: Duration) -> Result<Stopped> {
    stop_nodes(&[(pid, socket)], grace).map(|v| v[0])
}

/// [`stop_node`] for several nodes at once: all get SIGTERM, then all that remain after
/// `grace` get SIGKILL.
pub fn stop_nodes(nodes: &[(u32, &Path)], grace: Duration) -> Result<Vec<Stopped>> {
    let mut result = Vec::with_capacity(nodes.len());
    for &(pid, socket) in nodes {
        result.push(if signal_node(pid, socket, libc::SIGTERM)? {
            Stopped::Terminated
        } else {
            Stopped::NotRunning
        });
    }
    // Only the signalled ones: a pid that is now another program's may well live on.
    let signalled: Vec<u32> = nodes
        .iter()
        .zip(&result)
        .filter(|(_, how)| **how != Stopped::NotRunning)
        .map(|((pid, _), _)| *pid)
        .collect();
    let all_gone = || Ok(signalled.iter().all(|pid| !pid_alive(*pid)).then_some(()));
    if wait_for(grace, "the nodes to exit", all_gone).is_ok() {
        return Ok(result);
    }
    for (i, &(pid, socket)) in nodes.iter().enumerate() {
        if signal_node(pid, socket, libc::SIGKILL)? {
            result[i] = Stopped::Killed;
        }
    }
    wait_for(Duration::from_secs(5), "killed nodes to exit", all_gone)?;
    Ok(result)
}

/// Several nodes of one mesh, each a [`NodeProcess`] guard: dropping the mesh kills them all.
#[derive(Debug)]
pub struct Mesh {
    nodes: Vec<NodeProcess>,
    /// How long the nodes took from the first spawn until all answered and listened.
    startup: Duration,
}

impl Mesh {
    /// Starts `n` nodes of mesh `mesh` with [`NodeOptions::default`] otherwise: see
    /// [`Mesh::start_with`].
    pub fn start(n: usize, mesh: &str) -> Result<Self> {
        Self::start_with(n, &NodeOptions::new().mesh(mesh), None)
    }

    /// Starts `n` nodes with `options` each: node 0 alone, then the others at once, each
    /// given node 0's address as `--peer` (in addition to `options.peers`). Returns when all
    /// answer and listen (not when they have found each other: see
    /// [`Mesh::wait_converged`]). With `parent`, node `i`'s directory is `<parent>/node-<i>`.
    pub fn start_with(n: usize, options: &NodeOptions, parent: Option<&Path>) -> Result<Self> {
        let start = Instant::now();
        let options_for = |i: usize| {
            let mut o = options.clone();
            if let Some(parent) = parent {
                o.dir = Some(parent.join(format!("node-{i}")));
            }
            o
        };
        let mut nodes = Vec::with_capacity(n);
        if n > 0 {
            nodes.push(NodeProcess::start(options_for(0))?);
        }
        if n > 1 {
            let bootstrap = nodes[0].listen_addr().to_owned();
            for i in 1..n {
                nodes.push(NodeProcess::spawn(options_for(i).peer(bootstrap.clone()))?);
            }
            for node in &mut nodes[1..] {
                node.wait_ready()?;
            }
        }
        Ok(Self {
            nodes,
            startup: start.elapsed(),
        })
    }

    /// A mesh of nodes started some other way (node 0 is the one [`Mesh::wait_converged`]
    /// takes the mesh name from).
    pub fn from_nodes(nodes: Vec<NodeProcess>) -> Self {
        Self {
            nodes,
            startup: Duration::ZERO,
        }
    }

    /// How long the nodes took to start (to answer and listen).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NodeProcess {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut NodeProcess {
        &mut self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// Adds a node (of any mesh) to this set, so it is stopped with the others. It does not
    /// take part in [`Mesh::wait_converged`] unless its mesh is node 0's.
    pub fn push(&mut self, node: NodeProcess) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Whether node `i` has a child process (it may have died without our knowing yet).
    fn has_child(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Each running node's view (peer ids it sees), by index; `None` for nodes not running.
    pub fn views(&self) -> Result<Vec<Option<BTreeSet<String>>>> {
        (0..self.nodes.len())
            .map(|i| {
                if self.has_child(i) {
                    self.nodes[i].view().map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect()
    }

    /// Polls every running node's view until `done(views)` holds (views as in
    /// [`Mesh::views`]), for at most `timeout`; returns how long it took. On timeout the
    /// error shows the last views and the tail of each node's log.
    pub fn wait_views(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Option<BTreeSet<String>>]) -> bool,
    ) -> Result<Duration> {
        let mut last = Vec::new();
        let result = wait_for(timeout, what, || {
            last = self.views()?;
            Ok(done(&last).then_some(()))
        });
        match result {
            Ok(((), took)) => Ok(took),
            Err(e) => Err(anyhow!("{e:#}\n{}", self.describe(&last))),
        }
    }

    /// Each node's id, pid, view and log tail: for error messages.
    pub fn describe(&self, views: &[Option<BTreeSet<String>>]) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let seen = match views.get(i) {
                Some(Some(v)) => format!("sees {v:?}"),
                Some(None) => "not running".to_owned(),
                None => "view unknown".to_owned(),
            };
            out += &format!(
                "node {i} (pid {}, mesh {}, {}): {seen}\n  {}\n",
                node.pid,
                node.mesh,
                node.peer_id,
                log_tail(&node.log_path(), 10).replace('\n', "\n  ")
            );
        }
        out
    }

    /// Waits until every running node of node 0's mesh sees every other running one; returns
    /// how long that took.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Duration> {
        let mesh = self
            .nodes
            .first()
            .map(|n| n.mesh.clone())
            .unwrap_or_default();
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.has_child(i) && self.nodes[i].mesh == mesh)
            .collect();
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.peer_id()).collect();
        self.wait_views(timeout, "the mesh to converge", |views| {
            members.iter().all(|&i| {
                views[i].as_ref().is_some_and(|v| {
                    members
                        .iter()
                        .filter(|&&j| j != i)
                        .all(|&j| v.contains(ids[j]))
                })
            })
        })
    }

    /// Waits until no running node sees `peer_id`; returns how long that took.
    pub fn wait_gone(&self, peer_id: &str, timeout: Duration) -> Result<Duration> {
        self.wait_views(
            timeout,
            &format!("{peer_id} to leave every view"),
            |views| views.iter().flatten().all(|v| !v.contains(peer_id)),
        )
    }

    /// Detaches every node (see [`NodeProcess::detach`]).
    pub fn detach(self) -> Vec<DetachedNode> {
        self.nodes.into_iter().map(NodeProcess::detach).collect()
    }
}
