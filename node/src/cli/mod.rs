//! The commands that ask a running node (over its local socket).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_protocol::{frame, Hello, ToClient, ToNode};

pub(crate) mod config;
pub(crate) mod progress;
pub(crate) mod pull;
pub(crate) mod state;
pub(crate) mod top;

/// The ids cut to the shortest width (at least `min`) at which no two distinct ids look the
/// same, in order.
pub(crate) fn short_ids(ids: impl Iterator<Item = String>, min: usize) -> Vec<String> {
    let mut ids: Vec<String> = ids.collect();
    let width = shoal_protocol::state::unique_width(ids.iter().map(String::as_str), min);
    for id in &mut ids {
        id.truncate(width);
    }
    ids
}

/// How long a plain request waits for the node.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A connection to the node's socket, as a CLI process.
pub(crate) struct Conn {
    stream: UnixStream,
    socket: PathBuf,
    frames: frame::FrameDecoder,
    /// Why the first messages could not all be written: a node that refuses us may close
    /// before taking our bytes, and its reason is still there to read first.
    unwritten: Option<std::io::Error>,
}

impl Conn {
    /// Connects, says hello and sends `first`.
    pub(crate) fn open(socket: &Path, first: &[ToNode]) -> Result<Conn> {
        let mut stream = UnixStream::connect(socket)
            .with_context(|| format!("no node is listening on {}", socket.display()))?;
        let max = frame::DEFAULT_MAX_FRAME;
        let mut out = Vec::new();
        let hello = Hello::cli(0xc11);
        frame::encode_frame(&mut out, &ToNode::Hello(hello), max)?;
        for msg in first {
            frame::encode_frame(&mut out, msg, max)?;
        }
        let unwritten = stream.write_all(&out).err();
        Ok(Conn {
            stream,
            socket: socket.to_path_buf(),
            frames: frame::FrameDecoder::new(max),
            unwritten,
        })
    }

    fn failed(&mut self, e: std::io::Error) -> anyhow::Error {
        let e = self.unwritten.take().unwrap_or(e);
        anyhow::Error::new(e).context(format!("talking to the node on {}", self.socket.display()))
    }

    /// Sends one more message.
    pub(crate) fn send(&mut self, msg: &ToNode) -> Result<()> {
        let mut out = Vec::new();
        frame::encode_frame(&mut out, msg, frame::DEFAULT_MAX_FRAME)?;
        self.stream.write_all(&out).map_err(|e| self.failed(e))
    }

    /// The node's next message, or `None` if none came within `wait`. A refusal or a closed
    /// connection is an error.
    pub(crate) fn recv(&mut self, wait: Duration) -> Result<Option<ToClient>> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(msg) = self.frames.next_message::<ToClient>()? {
                if let ToClient::Rejected { reason } = msg {
                    bail!("the node refused us: {reason}");
                }
                return Ok(Some(msg));
            }
            self.stream
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(self.failed(e)),
            };
            if n == 0 {
                if let Some(e) = self.unwritten.take() {
                    return Err(self.failed(e));
                }
                bail!("the node closed the connection");
            }
            self.frames.extend(&chunk[..n]);
        }
    }
}

/// Sends one request to the node on `socket` and waits `wait` at most for its answer.
pub(crate) fn ask(socket: &Path, request: ToNode, wait: Duration) -> Result<ToClient> {
    let mut conn = Conn::open(socket, &[request])?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match conn.recv(left)? {
            Some(
                msg @ (ToClient::Status { .. } | ToClient::Objects { .. } | ToClient::State { .. }),
            ) => return Ok(msg),
            Some(_) => {}
            None => bail!(
                "the node on {} did not answer within {} s",
                socket.display(),
                wait.as_secs_f64()
            ),
        }
    }
}
