//! The registry: one target per decoder that reads bytes from outside the process.
//!
//! To add one, add a line to [`all`]: [`Target::message`] for a serde type decoded with the
//! codec (generator included), [`Target::new`] for any other entry point.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use libp2p::PeerId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_node::auth::code::{CodePolicy, Manifest, Publisher};
use shoal_node::auth::{self, Credential, JoinToken, Revocation, Trust};
use shoal_node::net::admission::{self, AdmitHello, Notice};
use shoal_node::net::{code, framed, objects};
use shoal_protocol::frame::{self, FrameDecoder, FrameError, DEFAULT_MAX_FRAME};
use shoal_protocol::mesh::{ActorLocation, LoadReport, PeerMsg, MAX_PEER_MSG, MAX_REPORT_BYTES};
use shoal_protocol::{
    codec, ActorId, BinaryId, ClientId, Hello, ObjectId, ResourceSet, Role, ToClient, ToNode,
    MAGIC, PROTOCOL_VERSION,
};

use crate::gen::arbitrary;
use crate::rng::Rng;
use crate::target::{round_trip, Target, Verdict};

/// Every target, in the order a run takes them.
pub fn all() -> Vec<Target> {
    vec![
        Target::new(
            "frame",
            "the frame layer (split_frame, decode_frame, FrameDecoder in random pieces) on any byte stream",
            frame_layer,
        )
        .generator(framed_stream::<ToNode>)
        .seeds(|| vec![prefixed(6, &frames(&[hello()]))]),
        Target::message::<ToNode>("to_node", "ToNode, from a local process (the node's socket)", DEFAULT_MAX_FRAME)
            .seed_values(|| vec![hello(), ToNode::Release { ids: vec![ObjectId::for_content(b"x")] }]),
        Target::message::<ToNode>("hello", "ToNode::Hello, a local process's handshake", DEFAULT_MAX_FRAME)
            .generator(|rng| codec::encode(&ToNode::Hello(arbitrary::<Hello>(rng)?)).ok())
            .seed_values(|| vec![hello()]),
        Target::message::<ToClient>("to_client", "ToClient, from the node (read by drivers, workers and the CLI)", DEFAULT_MAX_FRAME),
        Target::message::<PeerMsg>("peer_msg", "PeerMsg, a peer's control message", MAX_PEER_MSG)
            .seed_values(|| vec![PeerMsg::Fetch { id: ObjectId::for_content(b"x") }]),
        Target::new("peer_link", "a peer's control stream: PeerMsg frames read by the node's FrameReader, in random pieces", peer_link)
            .generator(frames_of::<PeerMsg>)
            .seeds(|| vec![frames(&[PeerMsg::Fetch { id: ObjectId::for_content(b"x") }, PeerMsg::Release { ids: vec![] }])]),
        Target::message_checked::<LoadReport>("load_report", "LoadReport, a peer's gossiped load, and its validation", MAX_REPORT_BYTES, check_report)
            .seed_values(|| vec![report()]),
        Target::new("object_request", "ObjectRequest, read by an object server from a peer's stream", stream_header::<objects::ObjectRequest, { objects::MAX_HEADER }>)
            .generator(framed_one::<objects::ObjectRequest>)
            .seeds(|| vec![frames(&[objects::ObjectRequest { id: ObjectId::for_content(b"x"), offset: 1 << 20, len: 4 << 20, lane: true }])]),
        Target::new("object_response", "ObjectResponse, read by a puller from a holder's stream", stream_header::<objects::ObjectResponse, { objects::MAX_HEADER }>)
            .generator(framed_one::<objects::ObjectResponse>),
        Target::new("code_request", "CodeRequest, read by a code server from a peer's stream", stream_header::<code::CodeRequest, { code::MAX_REQUEST }>)
            .generator(framed_one::<code::CodeRequest>)
            .seeds(|| vec![
                frames(&[code::CodeRequest { binary: BinaryId([7; 32]), want: code::Want::Whole }]),
                frames(&[code::CodeRequest { binary: BinaryId([7; 32]), want: code::Want::Ranges(vec![(0, 1 << 16), (1 << 20, 1 << 17)]) }]),
            ]),
        Target::new("code_response", "CodeResponse, read by a fetcher from a holder's stream, and the manifest it carries checked as the fetcher does", code_response)
            .generator(framed_one::<code::CodeResponse>)
            .seeds(|| vec![
                frames(&[code::CodeResponse::Found { size: 1 << 20, manifest: Some(manifest().encode()) }]),
                frames(&[code::CodeResponse::NotAllowed]),
            ]),
        Target::message::<ActorLocation>("actor_location", "ActorLocation, a DHT record any peer may store", 4096),
        Target::message::<ActorId>("actor_name", "a named actor's DHT record (an ActorId)", 64),
        Target::new("admit_hello", "an admission hello, the first message of any connection (before admission)", admit_hello)
            .generator(|rng| codec::encode(&arbitrary::<AdmitHello>(rng)?).ok())
            .seeds(|| vec![codec::encode(&AdmitHello { credential: credential(), revocations: vec![revocation()], publishers: vec![] }).expect("a hello encodes")]),
        Target::new("notice", "a membership notice (gossip): a revocation or a renewed credential", notice)
            .generator(|rng| codec::encode(&arbitrary::<Notice>(rng)?).ok())
            .seeds(|| vec![
                codec::encode(&Notice::Credential(credential())).expect("a notice encodes"),
                codec::encode(&Notice::Publisher(grant())).expect("a notice encodes"),
            ]),
        Target::message_checked::<Credential>("credential", "a node credential, checked against the mesh's trust", auth::MAX_ENCODED, check_credential)
            .seed_values(|| vec![credential()]),
        Target::message_checked::<Manifest>("manifest", "a code manifest, shipped with a binary by a peer, and the policy's check", auth::code::MAX_MANIFEST, check_manifest)
            .seed_values(|| vec![manifest()]),
        Target::new("join_token", "a join token as an operator pastes it", |b| Verdict::of(&JoinToken::from_text(&String::from_utf8_lossy(b))))
            .seeds(|| vec![auth::testing::token(FUZZ_MESH).to_text().into_bytes()]),
        Target::new("revocation_text", "a revocation as an operator passes it on", |b| Verdict::of(&Revocation::from_text(&String::from_utf8_lossy(b))))
            .seeds(|| vec![revocation().to_text().into_bytes()]),
        Target::new("statement_text", "an authority's statement (revocation or publisher grant) as `shoal mesh publish` reads it", |b| Verdict::of(&auth::Statement::from_text(&String::from_utf8_lossy(b))))
            .seeds(|| vec![revocation().to_text().into_bytes(), grant().to_text().into_bytes()]),
        Target::new("codec", "codec::decode of assorted types under assorted limits, and byte_range", codec_target)
            .generator(codec_input),
    ]
}

/// The target called `name`.
pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

// ---- seeds ----

fn hello() -> ToNode {
    ToNode::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Driver,
        pid: 4242,
        client: ClientId(7),
        binary: Some(shoal_protocol::BinaryInfo {
            id: BinaryId([3; 32]),
            path: "/usr/local/bin/driver".into(),
            manifest: Some(manifest().encode()),
        }),
    })
}

fn report() -> LoadReport {
    LoadReport {
        peer: vec![1, 2, 3],
        mesh: "default".into(),
        seq: 9,
        started_ms: 1_700_000_000_000,
        total: ResourceSet::cpus(4.0),
        free: ResourceSet::cpus(1.5),
        queued: 2,
        running: 3,
        store_capacity: 1 << 30,
        store_used: 1 << 20,
        target: "x86_64-unknown-linux-gnu".into(),
        binaries: vec![BinaryId([5; 32])],
        addrs: vec!["/ip4/10.0.0.1/tcp/4001".into()],
        accepts_code: true,
        labels: vec![("zone".into(), "eu-1".into())],
    }
}

/// Messages, framed as a stream carries them.
fn frames<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        frame::encode_frame(&mut out, m, usize::MAX).expect("a seed frame encodes");
    }
    out
}

fn prefixed(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend_from_slice(rest);
    out
}

/// A generated stream for the frame target: its setting byte (mostly a maximum the frames
/// fit, sometimes a tiny one), then one to three frames of random `T`s.
fn framed_stream<T: Serialize + DeserializeOwned>(rng: &mut Rng) -> Option<Vec<u8>> {
    let setting = if rng.chance(1, 8) {
        rng.below(FRAME_MAXIMA.len())
    } else {
        rng.range(FRAME_MAXIMA.len() - 3, FRAME_MAXIMA.len() - 1)
    };
    let mut out = vec![setting as u8];
    out.extend(frames_of::<T>(rng)?);
    Some(out)
}

/// One to three frames of random `T`s.
fn frames_of<T: Serialize + DeserializeOwned>(rng: &mut Rng) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..rng.range(1, 3) {
        frame::encode_frame(&mut out, &arbitrary::<T>(rng)?, usize::MAX).ok()?;
    }
    Some(out)
}

fn framed_one<T: Serialize + DeserializeOwned>(rng: &mut Rng) -> Option<Vec<u8>> {
    Some(frames(&[arbitrary::<T>(rng)?]))
}

// ---- the frame layer ----

/// The maxima the frame target tries, picked by the input's first byte: tiny ones (every
/// frame is too large), the object headers', the socket's.
const FRAME_MAXIMA: [usize; 8] = [
    0,
    1,
    16,
    1024,
    64 << 10,
    1 << 20,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_FRAME,
];

/// How a stream was cut into frames.
#[derive(Debug, PartialEq)]
struct Framing {
    payloads: Vec<Vec<u8>>,
    /// The error that ended it, if one did.
    error: Option<FrameError>,
    /// Bytes after the last whole frame (no error).
    leftover: usize,
}

/// The reference: `split_frame` over the whole stream at once. `decode_frame` must agree
/// with it frame by frame.
fn reference(stream: &[u8], max: usize) -> Framing {
    let (mut at, mut payloads) = (0, Vec::new());
    loop {
        let split = frame::split_frame(&stream[at..], max);
        let decoded = frame::decode_frame::<ToNode>(&stream[at..], max);
        match (split, decoded) {
            (Ok(Some((payload, used))), Ok(Some((msg, used2)))) => {
                assert_eq!(used, used2, "split_frame and decode_frame disagree");
                round_trip(&msg);
                payloads.push(payload.to_vec());
                at += used;
            }
            (Ok(Some((payload, used))), Err(FrameError::Decode(_))) => {
                payloads.push(payload.to_vec());
                at += used;
            }
            (Ok(None), Ok(None)) => {
                let leftover = stream.len() - at;
                assert_eq!(
                    frame::check_eof(&stream[at..]).is_ok(),
                    leftover == 0,
                    "check_eof disagrees with split_frame"
                );
                return Framing {
                    payloads,
                    error: None,
                    leftover,
                };
            }
            (Err(e), Err(e2)) => {
                assert_eq!(e, e2, "split_frame and decode_frame fail differently");
                return Framing {
                    payloads,
                    error: Some(e),
                    leftover: 0,
                };
            }
            (a, b) => panic!(
                "split_frame gave {a:?}, decode_frame {:?}",
                b.map(|o| o.map(|(_, u)| u))
            ),
        }
    }
}

/// The stream through a `FrameDecoder`, in pieces of random length, appended with `extend`
/// or (as the node's socket reader does) into `input()`'s room.
fn through_decoder(stream: &[u8], max: usize, rng: &mut Rng, use_input: bool) -> Framing {
    let mut d = FrameDecoder::new(max);
    let (mut fed, mut payloads) = (0, Vec::new());
    let mut error = None;
    'feed: while fed < stream.len() {
        let mut n = rng.range(1, 64).min(stream.len() - fed);
        if use_input {
            let buf = d.input();
            let room = buf.capacity() - buf.len();
            assert!(room > 0, "FrameDecoder::input gave no room to read into");
            n = n.min(room);
            buf.extend_from_slice(&stream[fed..fed + n]);
        } else {
            d.extend(&stream[fed..fed + n]);
        }
        fed += n;
        loop {
            match d.next_frame() {
                Ok(Some(payload)) => payloads.push(payload.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    let leftover = if error.is_some() { 0 } else { d.buffered() };
    if error.is_none() {
        assert_eq!(
            d.finish().is_ok(),
            leftover == 0,
            "finish disagrees with buffered"
        );
    }
    Framing {
        payloads,
        error,
        leftover,
    }
}

fn frame_layer(input: &[u8]) -> Verdict {
    let Some((&setting, stream)) = input.split_first() else {
        return Verdict::Rejected;
    };
    let max = FRAME_MAXIMA[usize::from(setting) % FRAME_MAXIMA.len()];
    let want = reference(stream, max);
    let mut rng = Rng::from_bytes(input);
    for use_input in [false, true] {
        let got = through_decoder(stream, max, &mut rng, use_input);
        assert_eq!(
            got, want,
            "FrameDecoder (input: {use_input}) disagrees with split_frame"
        );
    }
    // next_message consumes frames that do not decode, as the socket reader relies on.
    let mut d = FrameDecoder::new(max);
    d.extend(stream);
    let mut count = 0;
    while let Ok(Some(_)) | Err(FrameError::Decode(_)) = d.next_message::<ToNode>() {
        count += 1;
    }
    assert_eq!(
        count,
        want.payloads.len(),
        "next_message lost or repeated a frame"
    );
    if want.error.is_none() && want.leftover == 0 && !want.payloads.is_empty() {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    }
}

// ---- streams read through the node's FrameReader ----

/// A stream that gives its bytes in pieces of random length (from the input's hash), as a
/// network does.
struct Pieces<'a> {
    rest: &'a [u8],
    rng: Rng,
}

impl<'a> Pieces<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            rest: input,
            rng: Rng::from_bytes(input),
        }
    }
}

impl futures::AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.rng.range(1, 4096).min(out.len()).min(self.rest.len());
        out[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Poll::Ready(Ok(n))
    }
}

/// A request or response header read as its server or client does (`framed::read_one`).
fn stream_header<T, const MAX: usize>(input: &[u8]) -> Verdict
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let read = block_on(framed::read_one::<_, T>(&mut Pieces::new(input), MAX));
    if let Ok(msg) = &read {
        round_trip(msg);
    }
    Verdict::of(&read)
}

/// A control link as `link::read_link` reads it: a message, then those already arrived.
fn peer_link(input: &[u8]) -> Verdict {
    let mut reader = framed::FrameReader::new(Pieces::new(input));
    let mut count = 0;
    loop {
        match block_on(reader.next::<PeerMsg>(MAX_PEER_MSG)) {
            Ok(Some(msg)) => round_trip(&msg),
            Ok(None) => {
                return if count > 0 {
                    Verdict::Accepted
                } else {
                    Verdict::Rejected
                }
            }
            Err(_) => return Verdict::Rejected,
        }
        count += 1;
        loop {
            match reader.try_next::<PeerMsg>(MAX_PEER_MSG) {
                Ok(Some(msg)) => round_trip(&msg),
                Ok(None) => break,
                Err(_) => return Verdict::Rejected,
            }
            count += 1;
        }
    }
}

// ---- load reports ----

fn check_report(r: &LoadReport) {
    // As the node does with a report signed by its claimed peer, and by another.
    let own = r.validate(&r.peer, &r.mesh);
    let other = r.validate(b"another peer", &r.mesh);
    assert!(
        r.peer == b"another peer" || other.is_err(),
        "a forged report passed"
    );
    std::hint::black_box(own.is_ok());
}

// ---- admission ----

/// The test mesh whose authority checks the credentials (made once per process: its key,
/// so these seeds, differ from run to run; crash files keep the exact input).
const FUZZ_MESH: &str = "fuzz";

/// The peer the fuzzed credentials are checked for (a fixed key).
fn fuzz_peer() -> PeerId {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).expect("a valid key");
    key.public().to_peer_id()
}

fn trust() -> Trust {
    auth::testing::authority(FUZZ_MESH).trust()
}

fn credential() -> Credential {
    auth::testing::authority(FUZZ_MESH)
        .credential_for(&fuzz_peer(), auth::Role::Node, 0, u64::MAX / 2)
        .expect("a credential for an ed25519 peer")
}

fn revocation() -> Revocation {
    auth::testing::authority(FUZZ_MESH).revoke([9u8; 32], 1)
}

fn grant() -> auth::code::PublisherGrant {
    auth::testing::authority(FUZZ_MESH).grant_publisher(publisher().public(), 1, 2)
}

/// A publisher made once per process (like the test authority: seeds differ from run to run).
fn publisher() -> &'static Publisher {
    static ONE: std::sync::OnceLock<Publisher> = std::sync::OnceLock::new();
    ONE.get_or_init(Publisher::generate)
}

fn manifest() -> Manifest {
    publisher().sign([3u8; 32], "x86_64-unknown-linux-gnu", 1)
}

/// As a node does with the manifest of a binary a peer asks it to run: checked for the
/// binary and target it names (so the signature is checked too) under a policy trusting the
/// fuzz publisher.
fn check_manifest(m: &Manifest) {
    let policy = CodePolicy {
        trusted: vec![publisher().public()],
    };
    std::hint::black_box(policy.check(&m.binary, &m.target, Some(m)).is_ok());
}

/// A code response as a fetcher reads it: the header, then (found) its manifest checked
/// against the policy for the binary asked for, before any byte of the binary.
fn code_response(input: &[u8]) -> Verdict {
    let verdict = stream_header::<code::CodeResponse, { code::MAX_HEADER }>(input);
    let read = block_on(framed::read_one::<_, code::CodeResponse>(
        &mut Pieces::new(input),
        code::MAX_HEADER,
    ));
    if let Ok(code::CodeResponse::Found { manifest, .. }) = read {
        let policy = CodePolicy {
            trusted: vec![publisher().public()],
        };
        let check = code::Check {
            policy: &policy,
            target: "x86_64-unknown-linux-gnu",
        };
        let verdict = check.manifest(&BinaryId([3; 32]), manifest.as_deref());
        return Verdict::of(&verdict);
    }
    verdict
}

fn check_credential(cred: &Credential) {
    let verdict = trust().verify(cred, &fuzz_peer(), admission::unix_now());
    std::hint::black_box(verdict.is_ok());
}

/// As the admission handshake does with a hello: its revocations and publisher grants, then
/// its credential.
fn admit_hello(input: &[u8]) -> Verdict {
    let decoded = admission::decode_hello(input);
    if let Ok(hello) = &decoded {
        let mut trust = trust();
        for r in &hello.revocations {
            std::hint::black_box(trust.add_revocation(r).is_ok());
        }
        for g in &hello.publishers {
            std::hint::black_box(g.check(&trust, 1).is_ok());
        }
        check_credential(&hello.credential);
    }
    Verdict::of(&decoded)
}

fn notice(input: &[u8]) -> Verdict {
    let decoded = admission::decode_notice(input);
    match &decoded {
        Ok(Notice::Revocation(r)) => std::hint::black_box(trust().add_revocation(r).is_ok()),
        Ok(Notice::Publisher(g)) => std::hint::black_box(g.check(&trust(), 1).is_ok()),
        Ok(Notice::Credential(c)) => {
            check_credential(c);
            true
        }
        Err(_) => false,
    };
    Verdict::of(&decoded)
}

// ---- the codec ----

/// The limits the codec target decodes under (input byte 1).
const LIMITS: [usize; 6] = [0, 1, 8, 64, 4096, usize::MAX];
/// The types it decodes (input byte 0).
const TYPES: usize = 9;

fn decode_as<T>(bytes: &[u8], limit: usize) -> Verdict
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let decoded = codec::decode::<T>(bytes, limit);
    match &decoded {
        Ok(value) => {
            assert!(
                bytes.len() <= limit,
                "decoded {} bytes over a limit of {limit}",
                bytes.len()
            );
            round_trip(value);
            let again = codec::encode(value).expect("a decoded value encodes");
            assert!(
                again.len() <= bytes.len(),
                "re-encoded longer than the input"
            );
        }
        Err(codec::DecodeError::TooLarge { len, limit: l }) => {
            assert!(
                *len == bytes.len() && *l == limit && *len > limit,
                "wrong TooLarge"
            );
        }
        Err(_) => assert!(
            bytes.len() <= limit,
            "input over the limit not refused as TooLarge"
        ),
    }
    Verdict::of(&decoded)
}

fn codec_target(input: &[u8]) -> Verdict {
    let [kind, limit, bytes @ ..] = input else {
        return Verdict::Rejected;
    };
    let limit = LIMITS[usize::from(*limit) % LIMITS.len()];
    // byte_range and decode::<Vec<u8>> must agree on what a byte sequence is.
    if let Ok(range) = codec::byte_range(bytes) {
        assert_eq!(range.end, bytes.len());
        let whole = codec::decode::<Vec<u8>>(bytes, usize::MAX)
            .unwrap_or_else(|e| panic!("byte_range accepts what decode refuses: {e}"));
        assert_eq!(&whole[..], &bytes[range]);
    }
    match usize::from(*kind) % TYPES {
        0 => decode_as::<String>(bytes, limit),
        1 => decode_as::<Vec<u8>>(bytes, limit),
        2 => decode_as::<Vec<u64>>(bytes, limit),
        3 => decode_as::<Vec<String>>(bytes, limit),
        4 => decode_as::<BTreeMap<String, u64>>(bytes, limit),
        5 => decode_as::<(u64, Option<Vec<u8>>, bool)>(bytes, limit),
        6 => decode_as::<Vec<Vec<Vec<u8>>>>(bytes, limit),
        7 => decode_as::<(u128, char, i64, i16)>(bytes, limit),
        _ => decode_as::<Option<Box<[ObjectId]>>>(bytes, limit),
    }
}

fn codec_input(rng: &mut Rng) -> Option<Vec<u8>> {
    let kind = rng.below(TYPES);
    // Mostly a limit the value fits under; sometimes any.
    let limit = if rng.chance(1, 4) {
        rng.below(LIMITS.len())
    } else {
        LIMITS.len() - 1
    };
    let mut out = vec![kind as u8, limit as u8];
    let value = match kind {
        0 => codec::encode(&arbitrary::<String>(rng)?),
        1 => codec::encode(&arbitrary::<Vec<u8>>(rng)?),
        2 => codec::encode(&arbitrary::<Vec<u64>>(rng)?),
        3 => codec::encode(&arbitrary::<Vec<String>>(rng)?),
        4 => codec::encode(&arbitrary::<BTreeMap<String, u64>>(rng)?),
        5 => codec::encode(&arbitrary::<(u64, Option<Vec<u8>>, bool)>(rng)?),
        6 => codec::encode(&arbitrary::<Vec<Vec<Vec<u8>>>>(rng)?),
        7 => codec::encode(&arbitrary::<(u128, char, i64, i16)>(rng)?),
        _ => codec::encode(&arbitrary::<Option<Box<[ObjectId]>>>(rng)?),
    };
    out.extend(value.ok()?);
    Some(out)
}
