//! Helpers for the process-level tests of the `shoal` binary: a child guard that never leaks a
//! process, per-test temporary directories, a node started on its own socket with its stderr
//! captured, and a raw protocol client over a real Unix socket.
//!
//! Every wait here is a condition polled (or a condvar waited on) under a deadline; nothing
//! sleeps in place of synchronisation.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::{
    ClientId, Hello, NodeStatus, Role, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};

/// How long a node gets to start, answer or stop.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The node's maximum frame (the default).
pub const MAX: usize = frame::DEFAULT_MAX_FRAME;

/// The `shoal` binary under test.
pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// Owns a child process; kills and reaps it on drop. Only ever signals its own child (by the
/// handle, or by pid while the child is known not to be reaped yet).
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends `signal` to the child; it must not have been reaped (its pid is still ours).
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(
            self.0.try_wait().expect("try_wait").is_none(),
            "child {} already exited; not signalling a pid that may be reused",
            self.0.id()
        );
        let pid = libc::pid_t::try_from(self.0.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            r,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // `Child::kill` does nothing once the child has been reaped, so a reused pid is safe.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory under the system temporary directory, removed on drop.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("shoal-it-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        let dir = Self(path);
        let sock = dir.socket();
        // sun_path holds 108 bytes, including the terminating NUL.
        assert!(
            sock.as_os_str().len() < 100,
            "socket path too long for a Unix socket: {}",
            sock.display()
        );
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Where the node's socket goes.
    pub fn socket(&self) -> PathBuf {
        self.0.join("node.sock")
    }

    /// The `--store-dir` given to nodes (created on first use).
    pub fn store_parent(&self) -> PathBuf {
        let p = self.0.join("store");
        std::fs::create_dir_all(&p).expect("create store parent");
        p
    }

    /// The `shoal-<pid>-<id>` directories under the store parent.
    pub fn store_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store_parent())
            .expect("read store parent")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child's stderr, collected by a reader thread, with a condvar signalled on every line.
#[derive(Clone, Debug, Default)]
pub struct Log(Arc<(Mutex<String>, Condvar)>);

impl Log {
    fn capture(stderr: impl Read + Send + 'static) -> Self {
        let log = Log::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut rd = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match rd.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let (text, cv) = &*sink.0;
                        text.lock()
                            .unwrap()
                            .push_str(&strip_ansi(&String::from_utf8_lossy(&line)));
                        cv.notify_all();
                    }
                }
            }
        });
        log
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().clone()
    }

    /// Waits until some line contains every one of `needles`; returns that line.
    pub fn wait_for_line(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (text, cv) = &*self.0;
        let mut guard = text.lock().unwrap();
        loop {
            if let Some(line) = guard
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(line.to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }
}

/// Removes ANSI colour sequences (`ESC [ ... letter`), in case the logger colours its output.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A `shoal node` process with its stderr captured. Killed (and reaped) on drop.
#[derive(Debug)]
pub struct Node {
    pub child: KillOnDrop,
    pub socket: PathBuf,
    pub log: Log,
}

/// Spawns `shoal node --socket <socket> --cpus 2 --store-dir <store> <extra>` without waiting.
pub fn spawn_node(socket: &Path, store_parent: &Path, extra: &[&str]) -> Node {
    let mut cmd = Command::new(shoal_bin());
    cmd.arg("node")
        .arg("--socket")
        .arg(socket)
        .args(["--cpus", "2"])
        .arg("--store-dir")
        .arg(store_parent)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("SHOAL_SOCKET")
        .env_remove("SHOAL_STORE_BYTES")
        .env_remove("SHOAL_STORE_DIR")
        .env_remove("SHOAL_INLINE_THRESHOLD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn shoal node");
    let stderr = child.stderr.take().expect("piped stderr");
    Node {
        child: KillOnDrop::new(child),
        socket: socket.to_path_buf(),
        log: Log::capture(stderr),
    }
}

/// Starts a node in `dir` (socket `dir/node.sock`, store under `dir/store`) and waits until it
/// answers a status request.
pub fn start_node(dir: &TestDir, extra: &[&str]) -> Node {
    let mut node = spawn_node(&dir.socket(), &dir.store_parent(), extra);
    node.wait_ready();
    node
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Polls until the socket accepts a connection and the node answers `Status` over it.
    pub fn wait_ready(&mut self) -> NodeStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.child().try_wait().expect("try_wait") {
                panic!(
                    "node exited with {status} before serving; its log:\n{}",
                    self.log.text()
                );
            }
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                let mut c = RawClient::from_stream(stream);
                c.hello();
                return c.status(1);
            }
            assert!(
                Instant::now() < deadline,
                "node did not listen on {} within {DEADLINE:?}; its log:\n{}",
                self.socket.display(),
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new raw client, handshake done.
    pub fn client(&self) -> RawClient {
        let mut c = RawClient::connect(&self.socket);
        c.hello();
        c
    }

    /// A fresh client's status of this node.
    pub fn status(&self) -> NodeStatus {
        self.client().status(7)
    }

    /// Waits for a log line containing every one of `needles`, or panics showing the log.
    pub fn expect_log(&self, needles: &[&str]) -> String {
        match self.log.wait_for_line(needles, DEADLINE) {
            Some(line) => line,
            None => panic!(
                "no log line with {needles:?} within {DEADLINE:?}; the log:\n{}",
                self.log.text()
            ),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of node pid {} on {} ---\n{}",
                self.pid(),
                self.socket.display(),
                self.log.text()
            );
        }
    }
}

/// A well-formed handshake of a CLI client.
pub fn cli_hello() -> Hello {
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Cli,
        pid: std::process::id(),
        client: ClientId(u64::from(std::process::id()) << 32 | 0x7e57),
        binary: None,
    }
}

/// One frame holding `msg`.
pub fn frame_of(msg: &ToNode) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_frame(&mut out, msg, MAX).expect("encode frame");
    out
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly end of stream.
    Eof,
    /// The node closed with bytes of ours unread (Linux reports ECONNRESET once, after every
    /// byte the node did send has been read).
    Reset,
}

/// A protocol client over a real Unix socket, speaking raw frames.
#[derive(Debug)]
pub struct RawClient {
    stream: UnixStream,
    frames: FrameDecoder,
}

impl RawClient {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("set read timeout");
        stream
            .set_write_timeout(Some(DEADLINE))
            .expect("set write timeout");
        Self {
            stream,
            frames: FrameDecoder::new(MAX),
        }
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to node");
    }

    /// Writes bytes the node may refuse half-way: a node that has already rejected us and
    /// closed may make the write fail with a broken pipe or a reset, which is fine here.
    pub fn send_garbage(&mut self, bytes: &[u8]) {
        match self.stream.write_all(bytes) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("write to node: {e}"),
        }
    }

    /// Sets how long [`RawClient::recv`] waits before it panics.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    /// Writes one framed message.
    pub fn send(&mut self, msg: &ToNode) {
        self.send_raw(&frame_of(msg));
    }

    /// Sends a well-formed CLI `Hello` and expects `Welcome`.
    pub fn hello(&mut self) {
        self.send(&ToNode::Hello(cli_hello()));
        match self.recv() {
            Ok(Some(ToClient::Welcome { .. })) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Closes our sending direction (the node sees end of stream).
    pub fn shutdown_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown write half");
    }

    /// The next message; `Ok(None)` once the node closed the stream, `Err` if it reset it.
    /// Panics if nothing comes within the deadline.
    pub fn recv(&mut self) -> Result<Option<ToClient>, Closed> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(msg) = self
                .frames
                .next_message::<ToClient>()
                .expect("a ToClient frame")
            {
                return Ok(Some(msg));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    if let Err(e) = self.frames.finish() {
                        panic!("node closed inside a frame: {e}");
                    }
                    return Ok(None);
                }
                Ok(n) => self.frames.extend(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(Closed::Reset),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let waited = self.stream.read_timeout().ok().flatten();
                    panic!("nothing from the node within {waited:?} (connection still open)")
                }
                Err(e) => panic!("read from node: {e}"),
            }
        }
    }

    /// Reads every message until the node closes the connection.
    pub fn read_until_closed(&mut self) -> (Vec<ToClient>, Closed) {
        let mut msgs = Vec::new();
        loop {
            match self.recv() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => return (msgs, Closed::Eof),
                Err(c) => {
                    // After a reset the stream reports end of file; nothing may follow.
                    return (msgs, c);
                }
            }
        }
    }

    /// Sends `Status { request }` and reads until its reply, skipping other messages.
    pub fn status(&mut self, request: u64) -> NodeStatus {
        self.send(&ToNode::Status { request });
        loop {
            match self.recv() {
                Ok(Some(ToClient::Status { request: r, status })) if r == request => {
                    return *status
                }
                Ok(Some(ToClient::Rejected { reason })) => panic!("node rejected us: {reason}"),
                Ok(Some(_)) => {}
                other => panic!("connection ended before the Status reply: {other:?}"),
            }
        }
    }
}

/// Expects exactly: optionally `Welcome`, then one `Rejected`, then the end of the connection.
/// Returns the reason.
pub fn expect_rejected_and_closed(c: &mut RawClient, welcomed: bool) -> String {
    let (msgs, _closed) = c.read_until_closed();
    let mut it = msgs.into_iter();
    if welcomed {
        match it.next() {
            Some(ToClient::Welcome { .. }) => {}
            other => panic!("expected Welcome first, got {other:?}"),
        }
    }
    let reason = match it.next() {
        Some(ToClient::Rejected { reason }) => reason,
        other => panic!("expected Rejected, got {other:?}"),
    };
    let rest: Vec<ToClient> = it.collect();
    assert!(rest.is_empty(), "messages after Rejected: {rest:?}");
    reason
}

/// Runs `shoal <args>` to completion (bounded by the CLI's own 10 s read timeout).
pub fn run_cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(shoal_bin())
        .args(args)
        .env_remove("SHOAL_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run shoal");
    out
}
