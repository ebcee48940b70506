//! Length-prefixed frames: a little-endian `u32` payload length, then the payload.
//!
//! Pure functions over byte buffers: a reader appends whatever the socket gave it to a buffer
//! and calls [`split_frame`] until it returns `Ok(None)` (need more bytes). A length above the
//! maximum is an error at once, before any payload is read, so a peer cannot make us buffer
//! an oversized frame.

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
}
