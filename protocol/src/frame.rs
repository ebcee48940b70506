//! Length-prefixed frames: a little-endian `u32` payload length, then the payload.
//!
//! Pure functions over byte buffers. A writer appends frames to an output buffer with
//! [`encode_frame`] (many per write). A reader feeds whatever its stream gave it to a
//! [`FrameDecoder`] and takes whole frames out until it has none (need more bytes); at the end
//! of the stream, [`FrameDecoder::finish`] says whether it ended between frames. A length above
//! the maximum is an error at once, before any payload is read, so a peer cannot make us
//! buffer an oversized frame. [`split_frame`] and [`check_eof`] are the same rules over a plain
//! slice.
//!
//! A reader's buffer is never sized from a length header: it grows with the bytes that
//! actually arrived (doubling, [`grown_capacity`]), so four bytes announcing a large frame
//! cost a few KiB, not the frame; and a buffer that grew for one large frame is given back
//! once that frame is consumed ([`shrunk_capacity`]), so an idle stream holds next to nothing.

use serde::{de::DeserializeOwned, Serialize};

use crate::codec::{self, DecodeError, EncodeError};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;
/// The default maximum payload: 16 MiB. Larger values go through the object store, never
/// through a frame.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// A frame that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received of the frame (header included).
        have: usize,
        /// Bytes the frame needs (header included).
        want: usize,
    },
    /// The payload is not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_frame<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    msg: &T,
    max: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = codec::encode_into(out, msg) {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - HEADER_LEN;
    if len > max || len > u32::MAX as usize {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Looks for one whole frame at the start of `buf`. Returns its payload and the number of
/// bytes it used, `Ok(None)` if more bytes are needed, or an error for an oversized frame.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&buf[..HEADER_LEN]);
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((&buf[HEADER_LEN..end], end)))
}

/// What to report when a stream ends with `leftover` bytes buffered: `Ok` if none.
pub fn check_eof(leftover: &[u8]) -> Result<(), FrameError> {
    if leftover.is_empty() {
        return Ok(());
    }
    let want = if leftover.len() >= HEADER_LEN {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&leftover[..HEADER_LEN]);
        HEADER_LEN + u32::from_le_bytes(header) as usize
    } else {
        HEADER_LEN
    };
    Err(FrameError::Truncated {
        have: leftover.len(),
        want,
    })
}

/// Room a reader's buffer is given at least for its next read, whatever a header announces.
pub const MIN_READ: usize = 4 << 10;
/// A reader's buffer may keep up to this much capacity while idle; above it, the buffer is
/// shrunk once the frames in it are consumed.
pub const KEEP_CAPACITY: usize = 64 << 10;

/// The payload length a header announces, if `pending` starts with a whole header.
fn announced(pending: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = pending.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_le_bytes(header) as usize)
}

/// The length (header included) of the frame at the start of `pending`, if its header is in
/// and announces at most `max` payload bytes. For accounting only: a buffer is never sized
/// from it ([`grown_capacity`]).
pub fn frame_end(pending: &[u8], max: usize) -> Option<usize> {
    announced(pending)
        .filter(|len| *len <= max)
        .map(|len| HEADER_LEN + len)
}

/// The capacity a reader's buffer should grow to before its next read, or `None` if it has
/// room for one ([`MIN_READ`] spare). `pending` is what the buffer holds (the bytes not
/// handed out yet, at its start) and `capacity` its capacity.
///
/// The buffer doubles with the bytes that arrived, never jumping to what a header announces;
/// a frame whose header is in (and within `max`) caps the growth at its end, so the last
/// doubling does not overshoot it.
pub fn grown_capacity(capacity: usize, pending: &[u8], max: usize) -> Option<usize> {
    let len = pending.len();
    if capacity.saturating_sub(len) >= MIN_READ {
        return None;
    }
    let at_least = len + MIN_READ;
    let doubled = capacity.saturating_mul(2).max(at_least);
    let capped = match frame_end(pending, max) {
        Some(end) => doubled.min(end.max(at_least)),
        None => doubled,
    };
    Some(capped)
}

/// The capacity to shrink a reader's buffer to, or `None` to keep it: a buffer above
/// [`KEEP_CAPACITY`] that holds less than a quarter of its capacity (the large frame it grew
/// for has been consumed) goes down to twice what it holds (nothing if empty).
pub fn shrunk_capacity(capacity: usize, len: usize) -> Option<usize> {
    (capacity > KEEP_CAPACITY && len < capacity / 4).then_some(len * 2)
}

/// The reading side of the framing: a growable buffer that a reader feeds with whatever its
/// stream gave it, and that hands out whole frames, each checked against the maximum as soon
/// as its header is in.
///
/// ```
/// use shoal_protocol::frame::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME};
/// let mut wire = Vec::new();
/// encode_frame(&mut wire, &"one", DEFAULT_MAX_FRAME).unwrap();
/// encode_frame(&mut wire, &"two", DEFAULT_MAX_FRAME).unwrap();
/// let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
/// let mut got = Vec::new();
/// for piece in wire.chunks(3) {
///     // what a read returned (an async reader passes `decoder.input()` to `read_buf`)
///     decoder.extend(piece);
///     while let Some(msg) = decoder.next_message::<String>().unwrap() {
///         got.push(msg);
///     }
/// }
/// assert_eq!(got, ["one", "two"]);
/// assert!(decoder.finish().is_ok()); // the stream ended between frames
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already handed out.
    consumed: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder of frames of at most `max` payload bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            consumed: 0,
            max,
        }
    }

    /// The maximum payload.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Appends bytes the stream gave.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to append the stream's bytes to, for readers that read straight into a
    /// `Vec` (tokio's `read_buf`): it holds the bytes not handed out yet, and has room for a
    /// read of at least [`MIN_READ`] bytes. Its room grows with the bytes received (doubling),
    /// never with what a header announces ([`grown_capacity`]). Bytes appended are input, as
    /// with [`FrameDecoder::extend`]; nothing else may be changed.
    pub fn input(&mut self) -> &mut Vec<u8> {
        self.compact();
        if let Some(capacity) = grown_capacity(self.buf.capacity(), &self.buf, self.max) {
            self.buf.reserve_exact(capacity - self.buf.len());
        }
        &mut self.buf
    }

    /// The capacity of the buffer (what it costs in memory).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The payload of the next whole frame, which is consumed; `Ok(None)` if more bytes are
    /// needed. A frame longer than the maximum is an error as soon as its header is in, and
    /// stays one: the stream cannot be read further.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let used = match split_frame(&self.buf[self.consumed..], self.max)? {
            None => return Ok(None),
            Some((_, used)) => used,
        };
        let start = self.consumed + HEADER_LEN;
        self.consumed += used;
        Ok(Some(&self.buf[start..self.consumed]))
    }

    /// The next whole frame, decoded; `Ok(None)` if more bytes are needed. A frame that does
    /// not decode is consumed all the same.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let max = self.max;
        match self.next_frame()? {
            None => Ok(None),
            Some(payload) => Ok(Some(codec::decode(payload, max)?)),
        }
    }

    /// Bytes received and not handed out yet (the start of a frame).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// At the end of the stream: `Ok` if it ended between frames,
    /// [`FrameError::Truncated`] if it ended inside one.
    pub fn finish(&self) -> Result<(), FrameError> {
        check_eof(&self.buf[self.consumed..])
    }

    /// Drops the bytes handed out, and gives back the room a large frame needed once it is
    /// consumed ([`shrunk_capacity`]).
    fn compact(&mut self) {
        if self.consumed == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..self.consumed);
        }
        self.consumed = 0;
        if let Some(capacity) = shrunk_capacity(self.buf.capacity(), self.buf.len()) {
            self.buf.shrink_to(capacity);
        }
    }
}

/// Splits and decodes one message; `Ok(None)` if more bytes are needed.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    match split_frame(buf, max)? {
        None => Ok(None),
        Some((payload, used)) => Ok(Some((codec::decode(payload, max)?, used))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_join() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, &7u32, 100).unwrap();
        encode_frame(&mut buf, &String::from("hi"), 100).unwrap();
        let (a, used) = decode_frame::<u32>(&buf, 100).unwrap().unwrap();
        assert_eq!(a, 7);
        let (b, used2) = decode_frame::<String>(&buf[used..], 100).unwrap().unwrap();
        assert_eq!(b, "hi");
        assert_eq!(used + used2, buf.len());
        for cut in 0..buf.len() - used2 {
            // every strict prefix of the first frame asks for more
            if cut < used {
                assert_eq!(split_frame(&buf[..cut], 100).unwrap(), None);
            }
        }
    }

    #[test]
    fn oversized_is_rejected_before_payload() {
        let header = (1u32 << 30).to_le_bytes();
        assert_eq!(
            split_frame(&header, 1 << 20),
            Err(FrameError::TooLarge {
                len: 1 << 30,
                max: 1 << 20
            })
        );
        let mut out = Vec::new();
        let big = vec![0u8; 200];
        assert!(matches!(
            encode_frame(&mut out, &big, 100),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, &String::from("hello"), 100).unwrap();
        assert!(check_eof(&[]).is_ok());
        assert_eq!(
            check_eof(&buf[..3]),
            Err(FrameError::Truncated {
                have: 3,
                want: HEADER_LEN
            })
        );
        assert_eq!(
            check_eof(&buf[..buf.len() - 1]),
            Err(FrameError::Truncated {
                have: buf.len() - 1,
                want: buf.len()
            })
        );
    }

    fn wire(msgs: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            encode_frame(&mut out, m, 100).unwrap();
        }
        out
    }

    fn drain(d: &mut FrameDecoder) -> Vec<String> {
        let mut got = Vec::new();
        while let Some(m) = d.next_message::<String>().unwrap() {
            got.push(m);
        }
        got
    }

    #[test]
    fn the_decoder_yields_whole_frames_whatever_the_pieces() {
        let msgs = ["", "a", "hello", &"x".repeat(90)];
        let bytes = wire(&msgs);
        for piece in [1, 2, 3, 4, 5, 7, 64, bytes.len()] {
            let mut d = FrameDecoder::new(100);
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                d.extend(chunk);
                got.extend(drain(&mut d));
            }
            assert_eq!(got, msgs, "pieces of {piece}");
            assert_eq!(d.buffered(), 0);
            assert_eq!(d.finish(), Ok(()));
        }
    }

    #[test]
    fn the_decoder_input_is_a_read_buffer() {
        let bytes = wire(&["one", "two", "three"]);
        let mut d = FrameDecoder::new(100);
        let mut got = Vec::new();
        for chunk in bytes.chunks(5) {
            let input = d.input();
            assert!(input.capacity() - input.len() >= MIN_READ);
            input.extend_from_slice(chunk); // as `read_buf` appends
            got.extend(drain(&mut d));
        }
        assert_eq!(got, ["one", "two", "three"]);
    }

    #[test]
    fn the_decoder_keeps_a_partial_frame_across_reads() {
        let bytes = wire(&["first", "second"]);
        let first = HEADER_LEN + codec::encode(&"first").unwrap().len();
        let cut = first + 3;
        let mut d = FrameDecoder::new(100);
        d.extend(&bytes[..cut]);
        assert_eq!(drain(&mut d), ["first"]);
        assert_eq!(d.buffered(), 3);
        // Compacting keeps the partial frame.
        d.input().extend_from_slice(&bytes[cut..]);
        assert_eq!(drain(&mut d), ["second"]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn the_decoder_grows_with_the_bytes_not_with_the_header() {
        let mut d = FrameDecoder::new(8 << 20);
        d.extend(&(4u32 << 20).to_le_bytes());
        // Four bytes announcing 4 MiB get a read's room, not 4 MiB.
        let input = d.input();
        assert!(input.capacity() - input.len() >= MIN_READ);
        assert!(input.capacity() <= 2 * MIN_READ, "{}", input.capacity());
        // As the payload arrives, the buffer stays within twice what it holds, and never
        // beyond the frame's end (plus one read's room).
        let payload = vec![7u8; 4 << 20];
        let frame_end = HEADER_LEN + payload.len();
        let mut sent = 0;
        while sent < payload.len() {
            let input = d.input();
            let room = input.capacity() - input.len();
            assert!(room >= MIN_READ);
            let held = input.len();
            assert!(
                input.capacity() <= (2 * held).max(2 * MIN_READ).min(frame_end + MIN_READ),
                "capacity {} holding {held}",
                input.capacity()
            );
            let n = room.min(payload.len() - sent);
            input.extend_from_slice(&payload[sent..sent + n]);
            sent += n;
        }
        assert!(d.capacity() <= frame_end + MIN_READ);
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(4 << 20));
        // Consumed: the next read's buffer gives the room back.
        assert!(d.input().capacity() <= MIN_READ, "{}", d.capacity());
    }

    #[test]
    fn a_large_buffer_shrinks_once_its_frame_is_consumed() {
        let mut d = FrameDecoder::new(1 << 20);
        let mut wire = Vec::new();
        encode_frame(&mut wire, &vec![1u8; 512 << 10], 1 << 20).unwrap();
        encode_frame(&mut wire, &"next", 1 << 20).unwrap();
        let cut = wire.len() - 2;
        d.extend(&wire[..cut]);
        assert!(d.capacity() >= 512 << 10);
        assert_eq!(
            d.next_message::<Vec<u8>>().unwrap().map(|v| v.len()),
            Some(512 << 10)
        );
        assert_eq!(d.next_message::<String>(), Ok(None));
        // What is left is the start of the next frame: kept, in a small buffer.
        d.input().extend_from_slice(&wire[cut..]);
        assert!(d.capacity() <= KEEP_CAPACITY, "{}", d.capacity());
        assert_eq!(d.next_message::<String>(), Ok(Some("next".to_string())));
    }

    #[test]
    fn growth_and_shrinking_rules() {
        let header = |len: u32| len.to_le_bytes().to_vec();
        // Room enough: no growth.
        assert_eq!(grown_capacity(MIN_READ, &[], 100), None);
        // An empty buffer gets one read's room; a header alone does not change that.
        assert_eq!(grown_capacity(0, &[], 1 << 30), Some(MIN_READ));
        assert_eq!(
            grown_capacity(0, &header(1 << 30), 1 << 30),
            Some(4 + MIN_READ)
        );
        // Doubling with what is held...
        let mut pending = header(100 << 10);
        pending.resize(6 << 10, 0);
        assert_eq!(grown_capacity(8 << 10, &pending, 1 << 20), Some(16 << 10));
        // ...capped by the frame's end...
        pending.resize(60 << 10, 0);
        assert_eq!(
            grown_capacity(62 << 10, &pending, 1 << 20),
            Some(HEADER_LEN + (100 << 10))
        );
        // ...but always with a read's room.
        pending.resize(99 << 10, 0);
        assert_eq!(
            grown_capacity(HEADER_LEN + (100 << 10), &pending, 1 << 20),
            Some((99 << 10) + MIN_READ)
        );
        // An oversized header (refused anyway) does not cap, nor raise, the growth.
        assert_eq!(grown_capacity(0, &header(200), 100), Some(4 + MIN_READ));
        // A frame's end, for accounting.
        assert_eq!(frame_end(&header(100), 100), Some(104));
        assert_eq!(frame_end(&header(101), 100), None);
        assert_eq!(frame_end(&[1, 0], 100), None);
        // Shrinking: only large, mostly empty buffers.
        assert_eq!(shrunk_capacity(KEEP_CAPACITY, 0), None);
        assert_eq!(shrunk_capacity(1 << 20, 0), Some(0));
        assert_eq!(shrunk_capacity(1 << 20, 1000), Some(2000));
        assert_eq!(shrunk_capacity(1 << 20, 300 << 10), None);
    }

    #[test]
    fn the_decoder_refuses_an_oversized_frame_at_its_header() {
        let mut d = FrameDecoder::new(100);
        d.extend(&wire(&["fine"]));
        d.extend(&101u32.to_le_bytes());
        assert_eq!(d.next_message::<String>(), Ok(Some("fine".to_string())));
        let too_large = Err(FrameError::TooLarge { len: 101, max: 100 });
        assert_eq!(d.next_frame(), too_large);
        // It stays refused, and no room is made for it.
        assert_eq!(d.next_frame(), too_large);
        assert!(d.input().capacity() < 1 << 20);
        let mut huge = FrameDecoder::new(1 << 20);
        huge.extend(&u32::MAX.to_le_bytes());
        assert!(matches!(
            huge.next_frame(),
            Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize
        ));
        assert!(huge.input().capacity() < 1 << 20);
    }

    #[test]
    fn the_decoder_reports_a_stream_that_ends_inside_a_frame() {
        let bytes = wire(&["hello"]);
        let mut d = FrameDecoder::new(100);
        assert_eq!(d.finish(), Ok(()));
        d.extend(&bytes[..2]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(FrameError::Truncated {
                have: 2,
                want: HEADER_LEN
            })
        );
        d.extend(&bytes[2..bytes.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(FrameError::Truncated {
                have: bytes.len() - 1,
                want: bytes.len()
            })
        );
        d.extend(&bytes[bytes.len() - 1..]);
        assert_eq!(drain(&mut d), ["hello"]);
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn the_decoder_consumes_a_frame_that_does_not_decode() {
        let mut bytes = Vec::new();
        // A string announcing more bytes than its frame has.
        let payload = [50u8, b'x'];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend(wire(&["after"]));
        let mut d = FrameDecoder::new(100);
        d.extend(&bytes);
        assert!(matches!(
            d.next_message::<String>(),
            Err(FrameError::Decode(_))
        ));
        assert_eq!(d.next_message::<String>(), Ok(Some("after".to_string())));
    }
}
