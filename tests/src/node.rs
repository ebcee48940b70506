//! One real `shoal node` process: started ([`NodeProcess`]), asked how it is (the `shoal`
//! command line: [`status_json`], [`peers_json`], [`run_cli`]), and stopped, whether it is our
//! child (its guard) or not ([`stop_node`]).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_protocol::NodeStatus;

use crate::process::{cmdline, fresh_dir, pid_alive, run_with_timeout, KillOnDrop, KEEP_ENV};
use crate::raw::RawClient;
use crate::wait::{log_tail, wait_for, wait_for_line, DEADLINE, POLL};

/// How long a node may take to answer on its socket and listen, by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `shoal status` (or any other `shoal` command of [`run_cli`]) may take before
/// it is killed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a node's log quoted in an error message, in lines.
const LOG_TAIL_LINES: usize = 40;

/// The file each node's stdout and stderr go to, in its directory.
pub const LOG_FILE: &str = "node.log";

/// The variables `shoal node` reads in place of its flags. A node never inherits them from the
/// test (which may itself run attached to a node); give them with [`NodeOptions::env`].
const NODE_ENV: [&str; 7] = [
    shoal_protocol::env::SOCKET,
    "SHOAL_STORE_BYTES",
    "SHOAL_STORE_DIR",
    "SHOAL_SPILL_DIR",
    "SHOAL_MESH",
    "SHOAL_DATA_DIR",
    "SHOAL_INLINE_THRESHOLD",
];

/// The `shoal` binary.
///
/// `$SHOAL_BIN` if set, else the `shoal` next to the running executable: `target/<profile>/`
/// for a binary such as `shoal-mesh`, and the same directory for test binaries, which run from
/// `target/<profile>/deps/`. Cargo builds it there for `cargo test --workspace` or
/// `cargo build -p shoal-node --bin shoal`. (The node's own tests, which have
/// `CARGO_BIN_EXE_shoal`, name it with [`NodeOptions::bin`].)
pub fn shoal_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SHOAL_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let dir = target_dir()?;
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

/// The cargo profile directory of the running executable (`target/<profile>/`): its own
/// directory, or the parent of `deps/` for a test binary.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("where is this executable?")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_owned())
}

/// The example program `name` (`examples/<name>.rs`), built beside the running executable
/// (`target/<profile>/examples/`) by `cargo test --workspace`.
pub fn example_bin(name: &str) -> Result<PathBuf> {
    let dir = target_dir()?;
    let bin = dir.join("examples").join(name);
    if !bin.exists() {
        bail!(
            "{} missing: run `cargo test --workspace` (or `cargo build --examples`)",
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

/// Runs `<bin> <args>` (a `shoal` command such as `status --socket …`) to its end, with its
/// output captured, stdin closed and no `$SHOAL_SOCKET` (so only a `--socket` given here
/// counts); killed after [`CLI_TIMEOUT`].
pub fn run_cli<S: AsRef<OsStr>>(bin: &Path, args: impl IntoIterator<Item = S>) -> Result<Output> {
    let mut command = Command::new(bin);
    command.args(args).env_remove(shoal_protocol::env::SOCKET);
    run_with_timeout(&mut command, CLI_TIMEOUT)
}

/// Runs `<bin> <args>` and parses its stdout as one JSON value.
fn cli_json(bin: &Path, args: &[&OsStr]) -> Result<Value> {
    let out = run_cli(bin, args)?;
    let what = || format!("{} {args:?}", bin.display());
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} printed something other than JSON: {}",
            what(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `shoal status --json --socket <socket>` of `bin`.
fn status_json_of(bin: &Path, socket: &Path) -> Result<Value> {
    // This node's own state only: its waiting work is not asked of the mesh.
    let args = ["status", "--json", "--local", "--socket"].map(OsStr::new);
    cli_json(
        bin,
        &[args[0], args[1], args[2], args[3], socket.as_os_str()],
    )
}

/// `shoal peers --json --socket <socket>` of `bin`.
fn peers_json_of(bin: &Path, socket: &Path) -> Result<Value> {
    let args = ["peers", "--json", "--socket"].map(OsStr::new);
    cli_json(bin, &[args[0], args[1], args[2], socket.as_os_str()])
}

/// `shoal status --json --socket <socket>`: the node's own state and its view of the mesh.
pub fn status_json(socket: &Path) -> Result<Value> {
    status_json_of(&shoal_bin()?, socket)
}

/// `shoal peers --json --socket <socket>`: the other peers in the node's view.
pub fn peers_json(socket: &Path) -> Result<Value> {
    peers_json_of(&shoal_bin()?, socket)
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

/// What to start a node with. [`NodeOptions::default`] is a node of mesh `default` with 1 CPU
/// and a 64 MiB store, listening on `/ip4/127.0.0.1/tcp/0`, in a fresh temporary directory that
/// holds everything of it.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The mesh's name: the node joins with the test token of that name (see
    /// [`crate::authority::token`]) unless [`NodeOptions::join`] is set.
    pub mesh: String,
    /// `--join`: this token rather than the mesh name's (for tests of admission); an empty
    /// one: no `--join` at all (see [`NodeOptions::without_credential`]).
    pub join: Option<String>,
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
    /// More environment variables for the node. It inherits this process's (`RUST_LOG`
    /// included), except `$SHOAL_SOCKET` and the other variables it would read in place of
    /// its flags.
    pub env: Vec<(OsString, OsString)>,
    /// The node's directory; it must not exist yet, or be empty. Default: a new directory
    /// `shoal-node-<pid>-<n>` in the temporary directory.
    pub dir: Option<PathBuf>,
    /// `--socket`. Default: `node.sock` in the node's directory. Set it (with
    /// [`NodeOptions::store_dir`]) to start several nodes, one after another, on the same
    /// socket and store directory.
    pub socket: Option<PathBuf>,
    /// `--store-dir`, where the node makes its store directory. Default: `store/` in the
    /// node's directory.
    pub store_dir: Option<PathBuf>,
    /// The `shoal` binary. Default: [`shoal_bin`].
    pub bin: Option<PathBuf>,
    /// Start the node in a session of its own, so it outlives this process's terminal and
    /// never gets the terminal's Ctrl-C (for [`NodeProcess::detach`]ed nodes).
    pub new_session: bool,
    /// Start the node inside this network namespace (a file such as `/run/netns/<name>`):
    /// the nodes of a [`crate::netlab::Lab`]. Its socket and directories stay on the shared
    /// file system, so programs and `shoal status` reach it from any namespace.
    pub netns: Option<PathBuf>,
    /// Start the node in [`NodeOptions::dir`] even if it is not empty: the same node again
    /// (its identity is in `data/`), as `scripts/netlab restart` does for a node it does not
    /// hold as a child.
    pub reuse_dir: bool,
    /// How long it may take to answer on its socket and listen.
    pub startup_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            mesh: "default".into(),
            join: None,
            cpus: 1.0,
            store_bytes: 64 << 20,
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            peers: Vec::new(),
            failure_timeout: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            dir: None,
            socket: None,
            store_dir: None,
            bin: None,
            new_session: false,
            netns: None,
            reuse_dir: false,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl NodeOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins with this token (of mesh `mesh`, for the view's checks) rather than the test
    /// token of a mesh name.
    pub fn join(mut self, mesh: impl Into<String>, token: impl Into<String>) -> Self {
        self.mesh = mesh.into();
        self.join = Some(token.into());
        self
    }

    /// Starts the node with no credential (no `--join`): it serves its machine only.
    pub fn without_credential(mut self) -> Self {
        self.join = Some(String::new());
        self
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

    /// Adds arguments for `shoal node`.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
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

    /// Sets the node's socket.
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = Some(socket.into());
        self
    }

    /// Sets where the node makes its store directory.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }

    /// Sets the `shoal` binary.
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// Listens on `addr` only (a multiaddr), in place of the default.
    pub fn listen_on(mut self, addr: impl Into<String>) -> Self {
        self.listen = vec![addr.into()];
        self
    }

    /// Runs the node in the network namespace at `path` (see [`NodeOptions::netns`]).
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }
}

/// Makes a new, empty directory for a node: `dir` if given (it may exist if empty, or with
/// anything in it if `reuse`), else a fresh one in the temporary directory.
fn make_node_dir(dir: Option<&Path>, reuse: bool) -> Result<PathBuf> {
    let Some(dir) = dir else {
        return fresh_dir(&std::env::temp_dir(), "shoal-node");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !reuse && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty; not starting a node in it", dir.display());
    }
    Ok(dir.to_owned())
}

/// One `shoal node` process, our child (in a [`KillOnDrop`]), in a directory of its own.
/// Dropping it kills the process (SIGKILL), reaps it and removes the directory (unless
/// `$SHOAL_TESTS_KEEP` is set); [`NodeProcess::detach`] keeps both. If the thread is
/// panicking, the drop prints the tail of the node's log first.
///
/// Directory layout: `node.sock` (the API socket, unless [`NodeOptions::socket`] puts it
/// elsewhere), `store/` (unless [`NodeOptions::store_dir`]), `spill/`, `data/` (the identity
/// key: the same directory means the same peer id), and `node.log` (stdout and stderr of every
/// run, appended).
#[derive(Debug)]
pub struct NodeProcess {
    /// The running process, `None` once killed.
    process: Option<KillOnDrop>,
    /// The pid of the latest run.
    pid: u32,
    /// The `shoal` binary: of the node, and of the `shoal status` that asks it.
    bin: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    /// What every run is started with.
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    new_session: bool,
    netns: Option<PathBuf>,
    startup_timeout: Duration,
    mesh: String,
    /// From the latest run's `status --json`.
    peer_id: String,
    listen_addrs: Vec<String>,
    /// Where the latest run's output starts in the log.
    log_start: u64,
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
    /// its peer id or addresses. Lets several nodes start at once, or a test watch a node
    /// that is meant to fail.
    pub fn spawn(options: NodeOptions) -> Result<Self> {
        let dir = make_node_dir(options.dir.as_deref(), options.reuse_dir)?;
        let dir = dir.canonicalize().unwrap_or(dir);
        let socket = options.socket.unwrap_or_else(|| dir.join("node.sock"));
        // sun_path holds 108 bytes, with the terminating NUL.
        if socket.as_os_str().len() >= 108 {
            // Only just made, and empty: nothing of anyone's is lost.
            std::fs::remove_dir_all(&dir).ok();
            bail!(
                "{} is too long for a Unix socket path: use a shorter TMPDIR",
                socket.display()
            );
        }
        let store = options.store_dir.unwrap_or_else(|| dir.join("store"));
        for sub in [&store, &dir.join("spill"), &dir.join("data")] {
            std::fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let bin = match options.bin {
            Some(bin) => bin,
            None => shoal_bin()?,
        };
        // The key the drivers sign with exists before the node starts, so that it trusts it.
        crate::authority::default_publisher(&bin)?;
        let mut args: Vec<OsString> = vec!["node".into(), "--socket".into(), (&socket).into()];
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--store-dir", store.into());
        push("--spill-dir", dir.join("spill").into());
        push("--data-dir", dir.join("data").into());
        push("--store-bytes", options.store_bytes.to_string().into());
        push("--cpus", options.cpus.to_string().into());
        // A real mesh per name: its own authority, made once per process.
        let token = match &options.join {
            Some(t) => t.clone(),
            None => crate::authority::token(&options.mesh)?,
        };
        if !token.is_empty() {
            push("--join", token.into());
        }
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
        args.extend(options.extra_args);
        let mut node = Self {
            process: None,
            pid: 0,
            bin,
            dir,
            socket,
            args,
            env: options.env,
            new_session: options.new_session,
            netns: options.netns,
            startup_timeout: options.startup_timeout,
            mesh: options.mesh,
            peer_id: String::new(),
            listen_addrs: Vec::new(),
            log_start: 0,
            remove_dir: true,
        };
        node.spawn_child()?;
        Ok(node)
    }

    /// Starts a run of the node process, its output appended to the log.
    fn spawn_child(&mut self) -> Result<()> {
        debug_assert!(self.process.is_none());
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "=== shoal-tests: starting {:?}", self.args)?;
        self.log_start = log.metadata()?.len();
        let mut command = Command::new(&self.bin);
        command.args(&self.args);
        for var in NODE_ENV {
            command.env_remove(var);
        }
        command
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
        // Kept open until the child has forked; closed in the child by its exec.
        let netns = match &self.netns {
            Some(path) => Some(crate::netlab::enter_netns(&mut command, path)?),
            None => None,
        };
        let process = KillOnDrop::spawn("node", &mut command)?;
        drop(netns);
        self.pid = process.pid();
        self.process = Some(process);
        self.peer_id.clear();
        self.listen_addrs.clear();
        Ok(())
    }

    /// Waits until the node answers `status --json` with its own pid, a peer id and at least
    /// one listen address. Fails early if the process exits.
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(self.with_log(format!(
                    "node {} exited during start-up: {status}",
                    self.pid
                )));
            }
            let not_yet = match status_json_of(&self.bin, &self.socket) {
                Ok(status) => {
                    if status["pid"].as_u64() != Some(u64::from(self.pid)) {
                        bail!(self.with_log(format!(
                            "another process answers on {}: {status}",
                            self.socket.display()
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

    /// The running process.
    fn process_mut(&mut self) -> Result<&mut KillOnDrop> {
        let pid = self.pid;
        self.process
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
        status_json_of(&self.bin, &self.socket)
            .map_err(|e| anyhow!(self.with_log(format!("{e:#}"))))
    }

    /// The node's `status --json`. Panics (with the tail of the log) if it does not answer.
    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The node's `peers --json`, or an error carrying the tail of its log.
    pub fn try_peers(&self) -> Result<Value> {
        peers_json_of(&self.bin, &self.socket).map_err(|e| anyhow!(self.with_log(format!("{e:#}"))))
    }

    /// The peer ids this node sees.
    pub fn view(&self) -> Result<BTreeSet<String>> {
        Ok(view(&self.try_status()?))
    }

    /// A new [`RawClient`] of the node's socket, handshake done. Panics if that fails.
    pub fn client(&self) -> RawClient {
        let mut c = RawClient::connect(&self.socket);
        c.hello();
        c
    }

    /// The node's status as the protocol has it, asked by a fresh [`RawClient`]. Panics if
    /// the node does not answer.
    pub fn raw_status(&self) -> NodeStatus {
        self.client().status(7)
    }

    /// Runs `shoal <args>` with the binary this node runs: see [`run_cli`].
    pub fn run_cli<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Result<Output> {
        run_cli(&self.bin, args)
    }

    /// Waits at most `timeout` for a line of the latest run's log that contains every one of
    /// `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        wait_for_line(&self.log_path(), self.log_start, needles, timeout)
            .map_err(|e| anyhow!(self.with_log(format!("{e:#}"))))
    }

    /// [`NodeProcess::wait_for_log`] for [`DEADLINE`]; panics (with the tail of the log) if
    /// no such line comes.
    pub fn expect_log(&self, needles: &[&str]) -> String {
        self.wait_for_log(needles, DEADLINE)
            .unwrap_or_else(|e| panic!("{e:#}"))
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
        self.socket.clone()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `shoal` binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
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

    /// Whether it has a process (which may have died without our knowing yet).
    pub(crate) fn has_process(&self) -> bool {
        self.process.is_some()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// The process's exit status if it has exited (reaping it), `None` while it runs. An
    /// error if there is no process (killed, or never started).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.process_mut()?.try_wait();
        if !matches!(status, Ok(None)) {
            self.process = None;
        }
        status
    }

    /// Waits at most `timeout` for the process to exit; its exit status, or `None` if it still
    /// runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let status = self.process_mut()?.wait_timeout(timeout);
        if !matches!(status, Ok(None)) {
            self.process = None;
        }
        status
    }

    /// Sends `signal` to the process (say SIGTERM, to stop it as an operator would). Fails,
    /// signalling nothing, if it has exited.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        self.process_mut()?.signal(signal)
    }

    /// Kills the process with SIGKILL and reaps it. Nothing happens if it is not running.
    pub fn kill_9(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
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
        if let Some(process) = self.process.take() {
            process.release();
        }
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
        if std::thread::panicking() && self.remove_dir {
            eprintln!(
                "{}",
                self.with_log(format!(
                    "node pid {} on {} (the test panicked)",
                    self.pid,
                    self.socket.display()
                ))
            );
        }
        // Only our own child, by its handle (the guard): never a process found by name.
        drop(self.process.take());
        if self.remove_dir && std::env::var_os(KEEP_ENV).is_none() {
            // A directory left behind in the temporary directory is no reason to panic.
            std::fs::remove_dir_all(&self.dir).ok();
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
pub fn signal_node(pid: u32, socket: &Path, signal: libc::c_int) -> Result<bool> {
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
