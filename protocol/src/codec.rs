//! The one module that knows the serialization format.
//!
//! Everything Shoal puts on a wire or into the object store goes through [`encode`] and
//! [`decode`]: bincode 2 (serde mode, standard configuration with variable-length integers)
//! with a byte limit on every decode, and a decode must consume its input exactly.
//! Changing the format means changing this file only.

use serde::{de::DeserializeOwned, Serialize};

/// The hard upper bound bincode enforces on any single decode (1 TiB). Callers pass their own,
/// smaller, limit to [`decode`]; this one only guards bincode's own bookkeeping.
const HARD_LIMIT: usize = 1 << 40;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<HARD_LIMIT>()
}

fn config_within<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Bytes a valid encoding may make the decoder hold per input byte, at most: bincode counts
/// ("claims") the memory of what it decodes, and the largest claim per input byte is a `u128`
/// in a one-byte varint (16 bytes).
const CLAIM_PER_BYTE: usize = 16;

/// Decodes `bytes` with a claim limit scaled to their length: a length prefix that claims more
/// than the input could fill is refused before bincode allocates for it (it zeroes a string's
/// or a byte buffer's whole length before reading it). The limits go up by 16 from 1 MiB, so
/// a valid input always fits and a bad one is refused past at most 256 bytes per input byte
/// (a handful of configurations: each one is another copy of `T`'s decoder).
fn decode_scaled<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::serde::decode_from_slice as from;
    const MIB: usize = 1 << 20;
    match bytes.len().saturating_mul(CLAIM_PER_BYTE) {
        n if n <= MIB => from(bytes, config_within::<MIB>()),
        n if n <= 16 * MIB => from(bytes, config_within::<{ 16 * MIB }>()),
        n if n <= 256 * MIB => from(bytes, config_within::<{ 256 * MIB }>()),
        n if n <= 4096 * MIB => from(bytes, config_within::<{ 4096 * MIB }>()),
        _ => from(bytes, config()),
    }
}

/// Why bytes could not be decoded. Decoding never panics and never allocates more than its
/// input justifies (a bounded multiple of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the caller's limit.
    #[error("input of {len} bytes exceeds the decode limit of {limit} bytes")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A value decoded but bytes were left over: the input is not what the sender meant.
    #[error("{trailing} trailing bytes after a complete value")]
    TrailingBytes {
        /// How many bytes were left.
        trailing: usize,
    },
}

/// Why a value could not be encoded (a `Serialize` impl failed, or the result is too big).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The value's `Serialize` implementation reported an error.
    #[error("cannot encode value: {0}")]
    Failed(String),
    /// The encoding is longer than allowed.
    #[error("encoded value of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Encodes `value` to a fresh buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out` (no length prefix).
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| EncodeError::Failed(e.to_string()))
}

/// Writes the encoding of `value` into `out`, which must be exactly [`encoded_len`] long.
pub fn encode_into_slice<T: Serialize + ?Sized>(
    out: &mut [u8],
    value: &T,
) -> Result<usize, EncodeError> {
    bincode::serde::encode_into_slice(value, out, config())
        .map_err(|e| EncodeError::Failed(e.to_string()))
}

/// The number of bytes [`encode`] would produce, computed without allocating.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    struct Count(usize);
    impl bincode::enc::write::Writer for Count {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0 += bytes.len();
            Ok(())
        }
    }
    let mut c = Count(0);
    bincode::serde::encode_into_writer(value, &mut c, config())
        .map_err(|e| EncodeError::Failed(e.to_string()))?;
    Ok(c.0)
}

/// Decodes exactly one `T` from `bytes`, refusing input longer than `limit`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, used) =
        decode_scaled::<T>(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            trailing: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Where the bytes of an encoded byte sequence (a `Vec<u8>`, a `serde_bytes` buffer, …) are
/// inside its encoding: after the length prefix, up to the end. Lets a reader hand out a view
/// of a stored buffer without copying or decoding it.
pub fn byte_range(encoded: &[u8]) -> Result<std::ops::Range<usize>, DecodeError> {
    let (len, used) = bincode::decode_from_slice::<u64, _>(encoded, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    // A length near u64::MAX must not overflow (a panic in debug builds).
    let end = (used as u64).checked_add(len);
    if end != Some(encoded.len() as u64) {
        return Err(DecodeError::Malformed(format!(
            "a byte sequence of {len} bytes after a {used}-byte prefix does not fill {} bytes",
            encoded.len()
        )));
    }
    Ok(used..encoded.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        for n in [0usize, 1, 250, 251, 70_000] {
            let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let bytes = encode(&v).unwrap();
            let r = byte_range(&bytes).unwrap();
            assert_eq!(&bytes[r], &v[..]);
        }
        assert!(byte_range(&encode(&(3u64, 4u64)).unwrap()).is_err());
        assert!(byte_range(&[]).is_err());
        // A length that overflows past the prefix (found by shoal-fuzz, target codec: an
        // overflow panic in debug builds; release builds wrapped, and refused it).
        let mut wrap = vec![253];
        wrap.extend_from_slice(&(u64::MAX - 8).to_le_bytes());
        wrap.push(0);
        assert!(byte_range(&wrap).is_err());
    }

    #[test]
    fn round_trip_and_len() {
        let v = (1u64, String::from("abc"), vec![1.5f64, -2.0]);
        let bytes = encode(&v).unwrap();
        assert_eq!(encoded_len(&v).unwrap(), bytes.len());
        let back: (u64, String, Vec<f64>) = decode(&bytes, 1024).unwrap();
        assert_eq!(back, v);
        let mut slice = vec![0u8; bytes.len()];
        assert_eq!(encode_into_slice(&mut slice, &v).unwrap(), bytes.len());
        assert_eq!(slice, bytes);
    }

    #[test]
    fn limit_trailing_and_truncation() {
        let bytes = encode(&String::from("hello")).unwrap();
        assert!(matches!(
            decode::<String>(&bytes, 3),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode::<String>(&longer, 100),
            Err(DecodeError::TrailingBytes { trailing: 1 })
        );
        assert!(matches!(
            decode::<String>(&bytes[..bytes.len() - 1], 100),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_string_length_past_the_input_is_refused_before_it_is_allocated() {
        // A string claiming 512 GiB, then nothing (found by shoal-fuzz, target to_node): the
        // decoder asked for 512 GiB at once, and the process aborted.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&(1u64 << 39).to_le_bytes());
        assert!(matches!(
            decode::<String>(&bytes, usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
        // The largest claim per input byte still decodes: u128s in one byte each.
        let many = vec![1u128; 100_000];
        assert_eq!(
            decode::<Vec<u128>>(&encode(&many).unwrap(), usize::MAX),
            Ok(many)
        );
        let long = "x".repeat(3 << 20);
        assert_eq!(
            decode::<String>(&encode(&long).unwrap(), usize::MAX),
            Ok(long)
        );
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A Vec<u64> claiming u64::MAX elements, followed by nothing.
        let mut bytes = vec![0xff]; // varint tag for a u64 follows
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u64>>(&bytes, 1 << 20).is_err());
        assert!(decode::<String>(&bytes, 1 << 20).is_err());
    }
}
