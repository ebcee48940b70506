//! Frames on libp2p streams, in the one length-prefixed format of the project:
//! [`shoal_protocol::frame`]'s (a `u32` little-endian payload length, then the bincode
//! payload). Control links, object and code transfer, and the test-only request-response
//! codec all read and write their frames here.
//!
//! [`FrameReader`] keeps what it read past a frame, so a stream may carry raw bytes after
//! its frames (an object's or a binary's bytes after the answer's header):
//! [`FrameReader::read_raw`] hands those out first. Errors are `io::Error`s, with
//! `InvalidData` for an oversized or undecodable frame (the peer's fault), `UnexpectedEof`
//! for a stream that ends inside a frame, and `InvalidInput` for a message that cannot be
//! encoded (ours).

use std::future::Future;
use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::frame::{self, FrameError};

/// Bytes asked of the stream at a time.
const READ_CHUNK: usize = 64 << 10;

/// The `io::Error` for a frame error met reading: the kind says what went wrong.
pub fn io_error(e: FrameError) -> io::Error {
    let kind = match &e {
        FrameError::TooLarge { .. } | FrameError::Decode(_) => io::ErrorKind::InvalidData,
        FrameError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
        FrameError::Encode(_) => io::ErrorKind::InvalidInput,
    };
    io::Error::new(kind, e)
}

/// Encodes `msg` as one frame of at most `max` payload bytes.
pub fn encode<T: Serialize + ?Sized>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    frame::encode_frame(&mut out, msg, max)?;
    Ok(out)
}

/// Writes `msg` as one frame (at most `max` payload bytes) and flushes. The message is
/// encoded before the future is made, so the future does not borrow it.
pub fn write<'a, W, T>(
    io: &'a mut W,
    msg: &T,
    max: usize,
) -> impl Future<Output = io::Result<()>> + 'a
where
    W: AsyncWrite + Unpin,
    T: Serialize + ?Sized,
{
    // Whatever fails here is this side's message, not the peer's data.
    let bytes = encode(msg, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    async move {
        io.write_all(&bytes?).await?;
        io.flush().await
    }
}

/// Reads one frame (at most `max` payload bytes) and decodes it. For a stream on which the
/// other side sends this one frame and then waits: bytes read past it are dropped.
pub async fn read_one<R, T>(io: &mut R, max: usize) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    FrameReader::new(io)
        .next(max)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no frame before the end"))
}

/// Reads frames off a stream, keeping what it read past the last one.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `io`.
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Decodes the next frame if it has arrived whole; never reads.
    pub fn try_next<T: DeserializeOwned>(&mut self, max: usize) -> io::Result<Option<T>> {
        match frame::decode_frame(&self.buf[self.start..], max).map_err(io_error)? {
            Some((msg, used)) => {
                self.start += used;
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Reads and decodes the next frame; `Ok(None)` when the stream ends between frames.
    pub async fn next<T: DeserializeOwned>(&mut self, max: usize) -> io::Result<Option<T>> {
        loop {
            if let Some(msg) = self.try_next(max)? {
                return Ok(Some(msg));
            }
            if self.fill().await? == 0 {
                frame::check_eof(&self.buf[self.start..]).map_err(io_error)?;
                return Ok(None);
            }
        }
    }

    /// Reads raw bytes that follow the frames: those already read first, then the stream's.
    pub async fn read_raw(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let held = &self.buf[self.start..];
        if held.is_empty() {
            return self.io.read(out).await;
        }
        let n = held.len().min(out.len());
        out[..n].copy_from_slice(&held[..n]);
        self.start += n;
        Ok(n)
    }

    /// The stream (to write on it).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Appends what the stream has to the buffer; the number of bytes read (0 at its end).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let read = self.io.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + read.as_ref().map_or(0, |n| *n));
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn frames_then_raw_bytes_and_the_bounds() {
        futures::executor::block_on(async {
            let mut out = Vec::new();
            write(&mut out, "hello", 100).await.unwrap();
            write(&mut out, &7u32, 100).await.unwrap();
            out.extend_from_slice(b"raw tail");
            let mut r = FrameReader::new(Cursor::new(out.clone()));
            assert_eq!(r.next::<String>(100).await.unwrap().unwrap(), "hello");
            assert_eq!(r.try_next::<u32>(100).unwrap(), Some(7));
            let mut tail = [0u8; 32];
            let mut got = Vec::new();
            loop {
                let n = r.read_raw(&mut tail).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&tail[..n]);
            }
            assert_eq!(got, b"raw tail");
            // One byte over the limit: refused before the payload is read.
            let e = read_one::<_, String>(&mut Cursor::new(out.clone()), 5)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // Cut inside a frame; cut between frames.
            let e = read_one::<_, String>(&mut Cursor::new(out[..6].to_vec()), 100)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            let mut r = FrameReader::new(Cursor::new(Vec::new()));
            assert!(r.next::<String>(100).await.unwrap().is_none());
            // Garbage that frames fine but does not decode.
            let mut bad = Vec::new();
            frame::encode_frame(&mut bad, &(0xffu8, 0xffu8, 0xffu8), 100).unwrap();
            let e = read_one::<_, shoal_protocol::mesh::PeerMsg>(&mut Cursor::new(bad), 100)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // Too large to encode.
            let e = write(&mut Vec::new(), &vec![0u8; 200], 100)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        });
    }
}
