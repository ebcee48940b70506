//! Content-defined chunks of a binary, so that a peer holding one build of a program fetches
//! only what changed in the next (issue 16's code shipping): a rebuild moves code around,
//! and chunks cut at fixed offsets would all shift, while chunks cut where the content says
//! stay the same on both sides of a change.
//!
//! The cut points come from a gear hash over a sliding window (as FastCDC's): each byte
//! shifts the hash left by one and adds a per-byte random constant, so the hash depends on
//! the last 64 bytes only, and a cut is made where its top bits are zero. Chunks are at least
//! [`MIN_CHUNK`] and at most [`MAX_CHUNK`] bytes; between the minimum and [`AVG_CHUNK`] the
//! test asks for more zero bits than after it ("normalized chunking"), which keeps sizes near
//! the average. Each chunk is named by its blake3 hash. Pure: bytes in, chunks out.

/// No chunk but the last is shorter.
pub const MIN_CHUNK: usize = 16 << 10;
/// The size chunks are cut near.
pub const AVG_CHUNK: usize = 64 << 10;
/// No chunk is longer.
pub const MAX_CHUNK: usize = 256 << 10;

/// A cut below the average needs these (top) bits of the hash zero: 2 more than the
/// average's 16, so cuts there are 4 times rarer.
const MASK_BEFORE: u64 = !0u64 << (64 - 18);
/// A cut past the average needs these: 2 fewer, so cuts there are 4 times likelier.
const MASK_AFTER: u64 = !0u64 << (64 - 14);

/// One step of splitmix64, for the gear table (fixed: both ends of a transfer must cut the
/// same bytes the same way).
const fn splitmix(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (next, z ^ (z >> 31))
}

/// A random constant per byte value.
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state = 0x5348_4f41_4c43_4443; // "SHOALCDC"
    let mut i = 0;
    while i < 256 {
        let (next, value) = splitmix(state);
        state = next;
        table[i] = value;
        i += 1;
    }
    table
};

/// A chunk: where it is in the binary, and its blake3 hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// Its first byte's offset.
    pub offset: u64,
    /// Its length.
    pub len: u32,
    /// The blake3 hash of its bytes.
    pub hash: [u8; 32],
}

/// The length of the chunk that starts `data` (all of it if it is short).
fn cut(data: &[u8]) -> usize {
    if data.len() <= MIN_CHUNK {
        return data.len();
    }
    let end = data.len().min(MAX_CHUNK);
    let avg = end.min(AVG_CHUNK);
    let mut hash = 0u64;
    // (The hash of the bytes before the minimum is not needed: it forgets them after 64.)
    for (i, b) in data.iter().enumerate().take(avg).skip(MIN_CHUNK - 64) {
        hash = (hash << 1).wrapping_add(GEAR[usize::from(*b)]);
        if i >= MIN_CHUNK && hash & MASK_BEFORE == 0 {
            return i + 1;
        }
    }
    for (i, b) in data.iter().enumerate().take(end).skip(avg) {
        hash = (hash << 1).wrapping_add(GEAR[usize::from(*b)]);
        if hash & MASK_AFTER == 0 {
            return i + 1;
        }
    }
    end
}

/// `data` cut into content-defined chunks, in order, covering every byte once.
pub fn chunks(data: &[u8]) -> Vec<Chunk> {
    let mut out = Vec::with_capacity(data.len() / AVG_CHUNK + 1);
    let mut offset = 0;
    while offset < data.len() {
        let len = cut(&data[offset..]);
        let bytes = &data[offset..offset + len];
        out.push(Chunk {
            offset: offset as u64,
            // (At most MAX_CHUNK.)
            len: len as u32,
            hash: *blake3::hash(bytes).as_bytes(),
        });
        offset += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Bytes that look like nothing in particular (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_bytes_in_order_within_their_bounds() {
        for (len, seed) in [
            (0, 1),
            (1, 2),
            (MIN_CHUNK, 3),
            (3 * MAX_CHUNK + 5, 4),
            (8 << 20, 5),
        ] {
            let data = noise(len, seed);
            let cs = chunks(&data);
            let mut at = 0u64;
            for (i, c) in cs.iter().enumerate() {
                assert_eq!(c.offset, at);
                let bytes = &data[at as usize..at as usize + c.len as usize];
                assert_eq!(c.hash, *blake3::hash(bytes).as_bytes());
                assert!(c.len as usize <= MAX_CHUNK);
                if i + 1 < cs.len() {
                    assert!(c.len as usize > MIN_CHUNK, "chunk {i} of {len}: {}", c.len);
                }
                at += u64::from(c.len);
            }
            assert_eq!(at, len as u64);
            assert_eq!(chunks(&data), cs, "the same bytes are cut the same way");
        }
        // Near the average on noise.
        let cs = chunks(&noise(16 << 20, 9));
        let mean = (16 << 20) / cs.len();
        assert!(
            (AVG_CHUNK * 2 / 3..AVG_CHUNK * 2).contains(&mean),
            "{mean} bytes on average"
        );
    }

    #[test]
    fn a_change_in_the_middle_changes_only_the_chunks_around_it() {
        let old = noise(8 << 20, 7);
        // A rebuild: bytes inserted, some overwritten, some removed, far apart; everything
        // after each change is shifted.
        let mut new = old.clone();
        new.splice(1 << 20..1 << 20, noise(300, 8));
        new[4 << 20..(4 << 20) + 50].copy_from_slice(&noise(50, 9));
        new.drain(6 << 20..(6 << 20) + 1000);
        let known: HashSet<[u8; 32]> = chunks(&old).iter().map(|c| c.hash).collect();
        let fresh: Vec<Chunk> = chunks(&new)
            .into_iter()
            .filter(|c| !known.contains(&c.hash))
            .collect();
        let bytes: u64 = fresh.iter().map(|c| u64::from(c.len)).sum();
        // Three changes, each touching a chunk or two.
        assert!(fresh.len() <= 6, "{} new chunks", fresh.len());
        assert!(bytes <= 6 * MAX_CHUNK as u64, "{bytes} new bytes");
        // Fixed-size blocks would have found every block after the first insertion new.
    }
}
