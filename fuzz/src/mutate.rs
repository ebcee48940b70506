//! Mutations of valid encodings: small edits that keep most of a message intact, so the
//! decoder gets deep before it meets the damage.

use crate::rng::Rng;

/// Inputs are kept at most this long (the decoders' limits are far above; longer inputs only
/// slow the run down).
pub const MAX_INPUT: usize = 64 << 10;

/// Applies one to four random edits to `data`; `others` (other valid inputs) feed splices.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    for _ in 0..rng.range(1, 4) {
        edit(rng, data, others);
    }
    data.truncate(MAX_INPUT);
}

fn edit(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(11) {
        // Flip one bit.
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        // A byte the codec gives meaning to: the varint markers 251..=253, extremes.
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff]);
        }
        // Nudge a byte up or down.
        2 if len > 0 => {
            let at = rng.below(len);
            let delta = rng.range(1, 4) as u8;
            data[at] = if rng.chance(1, 2) {
                data[at].wrapping_add(delta)
            } else {
                data[at].wrapping_sub(delta)
            };
        }
        // Cut it short.
        3 if len > 0 => data.truncate(rng.below(len)),
        // Drop a range.
        4 if len > 0 => {
            let start = rng.below(len);
            let end = rng.range(start, len.min(start + 16));
            data.drain(start..end);
        }
        // Insert random bytes.
        5 => {
            let at = rng.below(len + 1);
            let n = rng.range(1, 8);
            let bytes = rng.bytes(n);
            data.splice(at..at, bytes);
        }
        // Repeat a range (a length now shorter than its content, or a list that repeats).
        6 if len > 0 => {
            let start = rng.below(len);
            let end = rng.range(start, len.min(start + 64));
            let copy = data[start..end].to_vec();
            data.splice(end..end, copy);
        }
        // A length field: a varint of an interesting value over (or in place of) one byte.
        7 => {
            let at = rng.below(len + 1);
            let varint = varint(rng.interesting_u64());
            let end = if rng.chance(1, 2) {
                (at + 1).min(len)
            } else {
                at
            };
            data.splice(at..end, varint);
        }
        // A frame header: a little-endian u32 near the real length, or huge.
        8 if len >= 4 => {
            let at = if rng.chance(1, 2) {
                0
            } else {
                rng.below(len - 3)
            };
            let real = (len - at - 4) as u32;
            let random = rng.next_u64() as u32;
            let value = *rng.pick(&[
                real,
                real.wrapping_add(1),
                real.wrapping_sub(1),
                0,
                u32::MAX,
                16 << 20,
                (16 << 20) + 1,
                random,
            ]);
            data[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        // Splice: this one's head, another's tail.
        9 if !others.is_empty() => {
            let other = rng.pick(others);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Append random bytes (trailing garbage, or the rest of a frame).
        _ => {
            let n = rng.len(64);
            let bytes = rng.bytes(n);
            data.extend_from_slice(&bytes);
        }
    }
}

/// The codec's variable-length encoding of `v` (bincode's standard configuration): one byte
/// below 251, else a marker (251: u16, 252: u32, 253: u64) and the value, little-endian.
pub fn varint(v: u64) -> Vec<u8> {
    if v < 251 {
        vec![v as u8]
    } else if v <= u16::MAX as u64 {
        let mut out = vec![251];
        out.extend_from_slice(&(v as u16).to_le_bytes());
        out
    } else if v <= u32::MAX as u64 {
        let mut out = vec![252];
        out.extend_from_slice(&(v as u32).to_le_bytes());
        out
    } else {
        let mut out = vec![253];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_the_codecs() {
        for v in [0u64, 250, 251, 65_535, 65_536, u32::MAX as u64, u64::MAX] {
            let ours = varint(v);
            let theirs = shoal_protocol::codec::encode(&v).unwrap();
            assert_eq!(ours, theirs, "{v}");
        }
    }

    #[test]
    fn mutations_change_the_input_and_stay_bounded() {
        let mut rng = Rng::new(3);
        let seed = shoal_protocol::codec::encode(&(7u64, String::from("hello"))).unwrap();
        let mut changed = 0;
        for _ in 0..1000 {
            let mut data = seed.clone();
            mutate(&mut rng, &mut data, std::slice::from_ref(&seed));
            assert!(data.len() <= MAX_INPUT);
            changed += usize::from(data != seed);
        }
        assert!(
            changed > 900,
            "{changed} of 1000 mutations changed the input"
        );
    }
}
