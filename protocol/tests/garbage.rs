//! Decoders fed random, truncated and oversized input: always a typed error or "need more
//! bytes", never a panic, never a huge allocation.

use shoal_protocol::{codec, frame, ClientId, FrameError, ObjectId, TaskId, ToClient, ToNode};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const MAX: usize = 1 << 20;

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed);
    for round in 0..20_000 {
        let len = (rng.next() % 300) as usize;
        let bytes = rng.bytes(len);
        // As a message payload.
        let _ = codec::decode::<ToNode>(&bytes, MAX);
        let _ = codec::decode::<ToClient>(&bytes, MAX);
        // As a stream: whatever the prefix says, the result is typed.
        match frame::decode_frame::<ToNode>(&bytes, MAX) {
            Ok(None) | Ok(Some(_)) => {}
            Err(FrameError::TooLarge { len, max }) => assert!(len > max, "round {round}"),
            Err(FrameError::Decode(_)) => {}
            Err(e) => panic!("unexpected error {e:?} in round {round}"),
        }
    }
}

fn sample() -> Vec<ToNode> {
    vec![
        ToNode::Release {
            ids: vec![ObjectId([1; 32]), ObjectId([2; 32])],
        },
        ToNode::Get {
            ids: vec![ObjectId([3; 32])],
        },
        ToNode::Put {
            id: ObjectId([4; 32]),
            value: vec![9; 100],
            nested: vec![ObjectId([8; 32])],
        },
        ToNode::Returned {
            tasks: vec![TaskId::new(ClientId(5), 6)],
        },
        ToNode::Status { request: 77 },
    ]
}

#[test]
fn every_truncation_asks_for_more_or_fails_typed() {
    for msg in sample() {
        let mut buf = Vec::new();
        frame::encode_frame(&mut buf, &msg, MAX).unwrap();
        for cut in 0..buf.len() {
            assert!(matches!(
                frame::decode_frame::<ToNode>(&buf[..cut], MAX),
                Ok(None)
            ));
            // At end of stream, a partial frame is a typed error.
            assert!(matches!(
                frame::check_eof(&buf[..cut]),
                Err(FrameError::Truncated { .. }) | Ok(())
            ));
            if cut > 0 {
                assert!(frame::check_eof(&buf[..cut]).is_err());
            }
            // A truncated payload decoded as if whole is malformed, never a wrong value.
            if cut > frame::HEADER_LEN {
                let payload = &buf[frame::HEADER_LEN..cut];
                assert!(
                    codec::decode::<ToNode>(payload, MAX).is_err(),
                    "{msg:?} cut at {cut}"
                );
            }
        }
        let (back, used) = frame::decode_frame::<ToNode>(&buf, MAX).unwrap().unwrap();
        assert_eq!((back, used), (msg, buf.len()));
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let mut rng = Rng(42);
    for msg in sample() {
        let good = codec::encode(&msg).unwrap();
        for _ in 0..2_000 {
            let mut bad = good.clone();
            let i = (rng.next() as usize) % bad.len();
            bad[i] ^= 1 << (rng.next() % 8);
            let _ = codec::decode::<ToNode>(&bad, MAX);
        }
    }
}

#[test]
fn oversized_frames_and_values_are_refused() {
    let header = ((MAX + 1) as u32).to_le_bytes();
    assert_eq!(
        frame::split_frame(&header, MAX),
        Err(FrameError::TooLarge {
            len: MAX + 1,
            max: MAX
        })
    );
    let big = ToNode::Put {
        id: ObjectId([0; 32]),
        value: vec![0; MAX],
        nested: vec![],
    };
    let mut out = Vec::new();
    assert!(matches!(
        frame::encode_frame(&mut out, &big, MAX),
        Err(FrameError::TooLarge { .. })
    ));
    let bytes = codec::encode(&big).unwrap();
    assert!(matches!(
        codec::decode::<ToNode>(&bytes, MAX),
        Err(codec::DecodeError::TooLarge { .. })
    ));
}
