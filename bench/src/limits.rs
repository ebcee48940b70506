//! The limits of the machine (BENCH.md, second table): the physical reference that Shoal's
//! figures are judged against, measured in the same run.
//!
//! The two-process rows re-execute this binary with a hidden subcommand (`__echo`,
//! `__tcp_sink`, `__exit`; see [`run_hidden`]). Every child is owned by a [`KillOnDrop`] that
//! kills and reaps it when dropped, and the children also exit on their own when their
//! connection reaches end-of-file (and, on Linux, when their parent dies).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_tests::KillOnDrop;

use crate::harness::{Bench, Registry, Unit};

const GIB: usize = 1 << 30;

/// Payload of one `unix_socket_roundtrips` ping (and pong).
const PING_BYTES: usize = 64;
/// Round trips per batch of `unix_socket_roundtrips`.
const PINGS_PER_BATCH: u64 = 1_000;
/// Size of one `write` in `tcp_loopback_gigabytes`.
const TCP_CHUNK: usize = 1 << 20;
/// How long a child may take to connect back.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child may take to exit by itself once its connection or input is closed.
pub(crate) const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

pub fn register(reg: &mut Registry) {
    reg.add(
        "memcpy_gigabytes",
        Unit::GbPerSec,
        "copying 1 GiB between two buffers in one process",
        memcpy_gigabytes,
    );
    reg.add(
        "unix_socket_roundtrips",
        Unit::OpsPerSec,
        "a 64-byte ping-pong between two processes over a Unix socket",
        unix_socket_roundtrips,
    );
    reg.add(
        "tcp_loopback_gigabytes",
        Unit::GbPerSec,
        "1 GiB through a 127.0.0.1 TCP connection between two processes, no encryption",
        tcp_loopback_gigabytes,
    );
    reg.add(
        "process_spawn_seconds",
        Unit::Seconds,
        "starting and reaping one process (a re-exec of shoal-bench that exits at once)",
        process_spawn_seconds,
    );
}

fn memcpy_gigabytes(b: &mut Bench) -> Result<()> {
    // `vec![x; n]` with x != 0 writes every byte, so every page is faulted in before timing
    // (a zeroed vec would be lazily-mapped calloc memory).
    let src = vec![0xA5u8; GIB];
    let mut dst = vec![0x5Au8; GIB];
    b.run_batches(|| {
        // black_box on both sides: the copy's input is unknown and its output is used.
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        Ok(GIB as u64)
    })?;
    ensure!(dst[GIB - 1] == 0xA5, "the copy did not happen");
    Ok(())
}

fn unix_socket_roundtrips(b: &mut Bench) -> Result<()> {
    static SOCKETS: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "shoal-bench-{}-{}.sock",
        std::process::id(),
        SOCKETS.fetch_add(1, Ordering::Relaxed)
    ));
    remove_if_there(&path).with_context(|| format!("removing a stale {}", path.display()))?;
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("binding the Unix socket {}", path.display()))?;
    let unlink = RemoveOnDrop(path.clone());
    listener.set_nonblocking(true)?;

    let mut child = KillOnDrop::spawn(
        "echo child",
        &mut hidden_command("__echo", [path.as_os_str()])?,
    )?;
    let mut stream = accept_within(&mut child, || match listener.accept() {
        Ok((s, _)) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    })?;
    drop(listener);
    drop(unlink);
    stream.set_nonblocking(false)?;

    let ping = [0x5Au8; PING_BYTES];
    let mut pong = [0u8; PING_BYTES];
    b.run_batches(|| {
        for _ in 0..PINGS_PER_BATCH {
            stream.write_all(&ping)?;
            stream.read_exact(&mut pong)?;
        }
        Ok(PINGS_PER_BATCH)
    })?;
    ensure!(
        pong == ping,
        "the echo child returned other bytes than it got"
    );
    drop(stream);
    child.finish(FINISH_TIMEOUT)
}

fn tcp_loopback_gigabytes(b: &mut Bench) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    listener.set_nonblocking(true)?;
    let total = GIB.to_string();
    let mut child = KillOnDrop::spawn(
        "TCP sink child",
        &mut hidden_command("__tcp_sink", [addr.as_ref(), total.as_ref()])?,
    )?;
    let mut stream = accept_within(&mut child, || match listener.accept() {
        Ok((s, _)) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    })?;
    drop(listener);
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;

    let chunk = vec![0xA5u8; TCP_CHUNK];
    let mut ack = [0u8; 1];
    b.run_batches(|| {
        let mut left = GIB;
        while left > 0 {
            let n = left.min(chunk.len());
            stream.write_all(&chunk[..n])?;
            left -= n;
        }
        // The sink acknowledges each whole GiB, so the batch ends when the last byte has
        // arrived, not when it was queued in the socket buffer.
        stream.read_exact(&mut ack)?;
        Ok(GIB as u64)
    })?;
    drop(stream);
    child.finish(FINISH_TIMEOUT)
}

fn process_spawn_seconds(b: &mut Bench) -> Result<()> {
    let exe = std::env::current_exe().context("finding the shoal-bench executable")?;
    b.run_timed(|| {
        let start = Instant::now();
        let status = Command::new(&exe)
            .arg("__exit")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("spawning {}", exe.display()))?;
        let took = start.elapsed();
        ensure!(status.success(), "`shoal-bench __exit` failed: {status}");
        Ok(took)
    })?;
    Ok(())
}

/// Runs a hidden subcommand if `args` (without the program name) names one; `None`
/// otherwise. `__exit` is handled before this in `main`, to start and stop as fast as possible.
pub fn run_hidden(args: &[OsString]) -> Option<Result<()>> {
    let cmd = args.first()?.to_str()?;
    let rest = &args[1..];
    let result = match cmd {
        "__exit" => Ok(()),
        "__echo" => die_with_parent().and_then(|()| match rest {
            [path] => echo_child(Path::new(path)),
            _ => Err(anyhow::anyhow!("usage: shoal-bench __echo <socket path>")),
        }),
        "__tcp_sink" => die_with_parent().and_then(|()| match rest {
            [addr, total] => tcp_sink_child(addr, total),
            _ => Err(anyhow::anyhow!(
                "usage: shoal-bench __tcp_sink <addr> <bytes per ack>"
            )),
        }),
        _ => return None,
    };
    Some(result)
}

/// `__echo`: connect to the socket, send back every 64-byte message until end-of-file.
fn echo_child(path: &Path) -> Result<()> {
    let mut s =
        UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
    let mut buf = [0u8; PING_BYTES];
    loop {
        match s.read_exact(&mut buf) {
            Ok(()) => s.write_all(&buf)?,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `__tcp_sink`: connect, read and drop everything, and write one byte after each `total`
/// bytes, until end-of-file.
fn tcp_sink_child(addr: &OsString, total: &OsString) -> Result<()> {
    let addr = addr.to_str().context("address is not UTF-8")?;
    let total: usize = total
        .to_str()
        .and_then(|t| t.parse().ok())
        .filter(|&t| t > 0)
        .context("bytes per ack must be a positive integer")?;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; TCP_CHUNK];
    loop {
        let mut got = 0;
        while got < total {
            let want = buf.len().min(total - got);
            match s.read(&mut buf[..want]) {
                Ok(0) if got == 0 => return Ok(()),
                Ok(0) => bail!("end-of-file after {got} of {total} bytes"),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        s.write_all(&[1])?;
    }
}

/// On Linux, asks for SIGKILL when the parent dies, so a child never outlives a
/// `shoal-bench` that was itself killed. Elsewhere the end-of-file on the connection does it.
pub(crate) fn die_with_parent() -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("prctl(PR_SET_PDEATHSIG)");
        }
    }
    Ok(())
}

/// `shoal-bench <sub> <args…>` with stdin and stdout closed (stdout carries the JSON lines)
/// and stderr inherited.
fn hidden_command<'a>(
    sub: &str,
    args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
) -> Result<Command> {
    let exe = std::env::current_exe().context("finding the shoal-bench executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg(sub)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Ok(cmd)
}

/// Polls `accept` (a non-blocking accept) until it yields a connection, the child exits, or
/// [`CONNECT_TIMEOUT`] passes.
fn accept_within<S>(
    child: &mut KillOnDrop,
    mut accept: impl FnMut() -> io::Result<Option<S>>,
) -> Result<S> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Some(s) = accept().context("accepting the child's connection")? {
            return Ok(s);
        }
        child.ensure_running()?;
        if Instant::now() >= deadline {
            bail!(
                "the {} did not connect within {:?}",
                child.what(),
                CONNECT_TIMEOUT
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Removes a file (the Unix socket's path) on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = remove_if_there(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Removes a file; one that is not there is no error.
fn remove_if_there(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
