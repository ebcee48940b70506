//! The commands that ask a running node (over its local socket).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_protocol::{frame, ClientId, Hello, Role, ToClient, ToNode, MAGIC, PROTOCOL_VERSION};

pub(crate) mod config;
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

/// Sends one request to the node on `socket` and waits `wait` at most for its answer.
pub(crate) fn ask(socket: &Path, request: ToNode, wait: Duration) -> Result<ToClient> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("no node is listening on {}", socket.display()))?;
    stream.set_read_timeout(Some(wait))?;
    let max = frame::DEFAULT_MAX_FRAME;
    let mut out = Vec::new();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Cli,
        pid: std::process::id(),
        client: ClientId(u64::from(std::process::id()) << 32 | 0xc11),
        binary: None,
    };
    frame::encode_frame(&mut out, &ToNode::Hello(hello), max)?;
    frame::encode_frame(&mut out, &request, max)?;
    // A node that refuses us may close before taking our bytes: its reason is still there
    // to read.
    let written = stream.write_all(&out);
    let mut frames = frame::FrameDecoder::new(max);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        while let Some(msg) = frames.next_message::<ToClient>()? {
            match msg {
                ToClient::Status { .. } | ToClient::Objects { .. } | ToClient::State { .. } => {
                    return Ok(msg)
                }
                ToClient::Rejected { reason } => bail!("the node refused us: {reason}"),
                _ => {}
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) => {
                written.with_context(|| format!("talking to the node on {}", socket.display()))?;
                return Err(e.into());
            }
        };
        if n == 0 {
            written.with_context(|| format!("talking to the node on {}", socket.display()))?;
            bail!("the node closed the connection");
        }
        frames.extend(&chunk[..n]);
    }
}
