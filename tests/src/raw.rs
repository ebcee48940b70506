//! A raw client of a node's local Unix socket, speaking the protocol's frames byte by byte:
//! for tests of what the node does with broken, hostile or half-finished clients.
//!
//! Unlike the rest of this crate, these helpers panic instead of returning errors: each call
//! is one step of a test, and a failed step should stop the test where it happened.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::{Hello, NodeStatus, ToClient, ToNode};

use crate::wait::DEADLINE;

/// The node's maximum frame (the default).
pub const MAX: usize = frame::DEFAULT_MAX_FRAME;

/// A well-formed handshake of a CLI client.
pub fn cli_hello() -> Hello {
    Hello::cli(0x7e57)
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

/// A protocol client over a real Unix socket, speaking raw frames. Reads and writes time out
/// after [`DEADLINE`] (reads: see [`RawClient::set_timeout`]), and then panic.
#[derive(Debug)]
pub struct RawClient {
    stream: UnixStream,
    frames: FrameDecoder,
}

impl RawClient {
    /// Connects to the node on `socket` (no handshake yet).
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        Self::from_stream(stream)
    }

    /// A client over an already connected stream.
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
    /// Panics if nothing comes within the read timeout.
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
                // After a reset the stream reports end of file; nothing may follow.
                Err(c) => return (msgs, c),
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
