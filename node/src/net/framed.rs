//! Frames on libp2p streams, in the one length-prefixed format of the project:
//! [`shoal_protocol::frame`]'s (a `u32` little-endian payload length, then the bincode
//! payload). Control links, object and code transfer, and the test-only request-response
//! codec all read and write their frames here.
//!
//! [`FrameReader`] keeps what it read past a frame, so a stream may carry raw bytes after
//! its frames (an object's or a binary's bytes after the answer's header):
//! [`FrameReader::read_raw`] hands those out first. Its buffer grows with the bytes that
//! arrived, never to what a header announces, and shrinks once a large frame is consumed
//! ([`frame::grown_capacity`], [`frame::shrunk_capacity`]); with a peer's budget
//! ([`FrameReader::with_budget`]) its capacity, or the whole of the frame it is reading, is
//! charged to the peer, and it stops reading while the peer's streams hold all of it. Errors are `io::Error`s, with
//! `InvalidData` for an oversized or undecodable frame (the peer's fault), `UnexpectedEof`
//! for a stream that ends inside a frame, and `InvalidInput` for a message that cannot be
//! encoded (ours).

use std::future::Future;
use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::frame::{self, FrameError};

use super::limits::{Held, PeerBudget};

/// Most bytes asked of the stream in one read.
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
    /// The part of the peer's budget the buffer's capacity holds, if it has one.
    held: Option<Held>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `io`.
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: Vec::new(),
            start: 0,
            held: None,
        }
    }

    /// A reader of `io` whose buffer is charged to `budget` (its peer's): it waits, not
    /// reading, while the budget has no room for the buffer to grow.
    pub fn with_budget(io: R, budget: PeerBudget) -> Self {
        Self {
            held: Some(Held::new(budget)),
            ..Self::new(io)
        }
    }

    /// The capacity of the buffer (what the reader costs in memory, besides the stream).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
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
    /// Cancel-safe: dropped while it waits, nothing read is lost.
    pub async fn next<T: DeserializeOwned>(&mut self, max: usize) -> io::Result<Option<T>> {
        loop {
            if let Some(msg) = self.try_next(max)? {
                return Ok(Some(msg));
            }
            if self.fill(max).await? == 0 {
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
    /// The buffer first gives back the room of frames consumed, then grows (if it must) by
    /// doubling with what it holds, within the budget if it has one; a read asks for at most
    /// its spare room and [`READ_CHUNK`].
    async fn fill(&mut self, max: usize) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if let Some(capacity) = frame::shrunk_capacity(self.buf.capacity(), self.buf.len()) {
            self.buf.shrink_to(capacity);
        }
        let grown = frame::grown_capacity(self.buf.capacity(), &self.buf, max);
        if let Some(held) = &mut self.held {
            // The buffer's capacity is charged, and the whole of a frame whose header is in
            // at once: a reader that started a frame never waits for bytes that another
            // reader of the peer holds (two half-read frames would wait for each other
            // forever); a frame gets all it may need, or waits before it is read.
            let capacity = grown.unwrap_or(self.buf.capacity());
            let frame = frame::frame_end(&self.buf, max).unwrap_or(0);
            held.hold(capacity.max(frame)).await?;
        }
        if let Some(capacity) = grown {
            self.buf.reserve_exact(capacity - self.buf.len());
        }
        let len = self.buf.len();
        let room = (self.buf.capacity() - len).min(READ_CHUNK);
        self.buf.resize(len + room, 0);
        // Cut back to what was read however this ends, even if the future is dropped while
        // it waits: the zeroes given to the read are never taken for data.
        let mut filled = Filled {
            buf: &mut self.buf,
            len,
        };
        let read = self.io.read(&mut filled.buf[len..]).await;
        filled.len += read.as_ref().map_or(0, |n| *n);
        read
    }
}

/// A buffer cut back to `len` bytes when dropped.
struct Filled<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl Drop for Filled<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use shoal_protocol::frame::{KEEP_CAPACITY, MIN_READ};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A stream that gives `bytes` and then nothing more, without ending (a peer that
    /// announced a frame and went quiet).
    struct Stalled(Cursor<Vec<u8>>);

    impl AsyncRead for Stalled {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => Poll::Pending,
                other => other,
            }
        }
    }

    fn frame_of_len(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_frame(&mut out, &vec![3u8; len], usize::MAX).unwrap();
        out
    }

    #[test]
    fn an_announced_frame_costs_a_read_not_the_frame() {
        futures::executor::block_on(async {
            let header = (64u32 << 20).to_le_bytes().to_vec();
            let mut r = FrameReader::new(Stalled(Cursor::new(header)));
            for _ in 0..3 {
                assert!(futures::poll!(Box::pin(r.next::<Vec<u8>>(64 << 20))).is_pending());
            }
            assert_eq!(r.buf.len(), 4);
            assert!(r.capacity() <= 2 * MIN_READ, "{}", r.capacity());
        });
    }

    #[test]
    fn a_buffer_grown_for_a_large_frame_is_given_back() {
        futures::executor::block_on(async {
            let mut wire = frame_of_len(1 << 20);
            write(&mut wire, "small", 100).await.unwrap();
            let mut r = FrameReader::new(Cursor::new(wire));
            let big: Vec<u8> = r.next(2 << 20).await.unwrap().unwrap();
            assert_eq!(big.len(), 1 << 20);
            // Grown with the bytes, within the frame (and one read's room).
            assert!(r.capacity() >= 1 << 20);
            assert!(r.capacity() <= (1 << 20) + 2 * MIN_READ, "{}", r.capacity());
            assert_eq!(r.next::<String>(100).await.unwrap().unwrap(), "small");
            assert!(r.next::<String>(100).await.unwrap().is_none());
            assert!(r.capacity() <= KEEP_CAPACITY, "{}", r.capacity());
        });
    }

    #[test]
    fn readers_of_one_peer_share_its_budget() {
        futures::executor::block_on(async {
            let budget = PeerBudget::new(256 << 10);
            let frame = frame_of_len(160 << 10);
            let mut a = FrameReader::with_budget(Cursor::new(frame.clone()), budget.clone());
            let got: Vec<u8> = a.next(1 << 20).await.unwrap().unwrap();
            assert_eq!(got.len(), 160 << 10);
            // The buffer's capacity is charged (until it is given back or the reader goes).
            assert_eq!(budget.total() - budget.available(), a.capacity());
            assert!(a.capacity() >= 160 << 10);
            let mut b = FrameReader::with_budget(Cursor::new(frame), budget.clone());
            assert!(
                futures::poll!(Box::pin(b.next::<Vec<u8>>(1 << 20))).is_pending(),
                "b waits for room"
            );
            // Its frame is not started on: b's buffer is its first read's room, and giving
            // up the wait gives back what it was being granted.
            assert!(b.capacity() <= MIN_READ, "{}", b.capacity());
            let held = budget.total() - budget.available();
            assert_eq!(held, a.capacity() + b.capacity());
            let mut next = Box::pin(b.next::<Vec<u8>>(1 << 20));
            assert!(futures::poll!(next.as_mut()).is_pending());
            drop(a);
            assert_eq!(next.await.unwrap().unwrap().len(), 160 << 10);
            assert!(b.next::<Vec<u8>>(1 << 20).await.unwrap().is_none());
            // At the end of its stream b holds one read's room at most.
            assert!(budget.total() - budget.available() <= MIN_READ);
            drop(b);
            assert_eq!(budget.available(), budget.total());
        });
    }

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
