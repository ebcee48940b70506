//! Object transfer between in-process peers over TCP loopback: whole objects from one
//! holder, pieces from several at once, holders that lack the object, lie about it, break
//! off part-way or are sent garbage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use shoal_node::net::limits::PeerLimits;
use shoal_node::net::objects::{
    self, ObjectError, ObjectRequest, ObjectResponse, ObjectSource, Served,
};
use shoal_node::net::progress::Progress;
use shoal_node::net::{framed, NetConfig, NetHandle};
use shoal_protocol::{frame, Digest, ObjectId};
use shoal_tests::TestDir;

mod inproc;
use inproc::{addr, wait};

const MIB: usize = 1 << 20;

/// Pseudo-random bytes (xorshift), different per seed.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A pin on a served object: counts itself while alive.
struct Pin(Arc<AtomicUsize>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A holder's objects: files in its directory. Counts the streams it served and the pins
/// alive.
#[derive(Default)]
struct Files {
    objects: Mutex<HashMap<ObjectId, (PathBuf, u64, Digest)>>,
    opens: AtomicUsize,
    pinned: Arc<AtomicUsize>,
}

impl ObjectSource for Files {
    fn open(&self, id: ObjectId) -> BoxFuture<'static, Option<Served>> {
        let found = self.objects.lock().unwrap().get(&id).cloned();
        if found.is_some() {
            self.opens.fetch_add(1, Ordering::SeqCst);
        }
        let pinned = self.pinned.clone();
        Box::pin(async move {
            let (path, size, digest) = found?;
            pinned.fetch_add(1, Ordering::SeqCst);
            Some(Served {
                path,
                size,
                digest,
                guard: Box::new(Pin(pinned)),
            })
        })
    }
}

struct Holder {
    net: NetHandle,
    files: Arc<Files>,
    dir: PathBuf,
}

impl Holder {
    fn id(&self) -> PeerId {
        self.net.peer_id()
    }

    /// Holds `bytes` as object `id`.
    fn hold(&self, id: ObjectId, bytes: &[u8]) {
        self.hold_as(id, bytes, Digest::of(bytes));
    }

    /// Holds a copy of `bytes` with a byte flipped in every MiB (so every piece of it is
    /// bad), claiming the digest of `bytes`.
    fn hold_corrupt(&self, id: ObjectId, bytes: &[u8]) {
        let mut bad = bytes.to_vec();
        let mut at = (MIB / 2).min(bad.len() / 2);
        while at < bad.len() {
            bad[at] ^= 0x40;
            at += MIB;
        }
        self.hold_as(id, &bad, Digest::of(bytes));
    }

    fn hold_as(&self, id: ObjectId, bytes: &[u8], digest: Digest) {
        let path = self.dir.join(id.to_hex());
        std::fs::write(&path, bytes).unwrap();
        self.files
            .objects
            .lock()
            .unwrap()
            .insert(id, (path, bytes.len() as u64, digest));
    }

    fn opens(&self) -> usize {
        self.files.opens.load(Ordering::SeqCst)
    }
}

struct Mesh {
    puller: NetHandle,
    /// Whether the holders serve on their sealed lanes and the puller takes them.
    lanes: bool,
    holders: Vec<Holder>,
    protocol: StreamProtocol,
    dir: TestDir,
}

async fn peer(mesh: &str, peers: Vec<Multiaddr>) -> NetHandle {
    let mut c = NetConfig::new(shoal_node::auth::testing::token(mesh));
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.peers = peers;
    c.mdns = false;
    inproc::start(c).await
}

/// A puller connected to `holders` (`serving` of them serve objects, the rest do not speak
/// the protocol), each with its own directory.
async fn mesh_with(name: &str, holders: usize, serving: usize) -> Mesh {
    mesh_lanes(name, holders, serving, true).await
}

/// [`mesh_with`], the lanes used or not.
async fn mesh_lanes(name: &str, holders: usize, serving: usize, lanes: bool) -> Mesh {
    let dir = TestDir::new(&format!("shoal-objects-{name}"));
    // Not the node's own protocol name: the node may serve that one itself.
    let protocol = StreamProtocol::try_from_owned(format!("/shoal/{name}/obj-test/1")).unwrap();
    let mut hs = Vec::new();
    for i in 0..holders {
        let net = peer(name, vec![]).await;
        let files = Arc::new(Files::default());
        if i < serving {
            let lane = if lanes { net.lane() } else { None };
            objects::spawn_server(net.streams(), protocol.clone(), files.clone(), lane).unwrap();
        }
        let hdir = dir.join(format!("holder{i}"));
        std::fs::create_dir_all(&hdir).unwrap();
        hs.push(Holder {
            net,
            files,
            dir: hdir,
        });
    }
    let puller = peer(name, hs.iter().map(|h| addr(&h.net)).collect()).await;
    let ids: Vec<String> = hs.iter().map(|h| h.id().to_string()).collect();
    wait(
        Duration::from_secs(20),
        "connections to the holders",
        || {
            let v = puller.view();
            ids.iter()
                .all(|id| v.peers.iter().any(|p| &p.peer_id == id && p.connected))
        },
    )
    .await;
    Mesh {
        puller,
        lanes,
        holders: hs,
        protocol,
        dir,
    }
}

async fn mesh(name: &str, holders: usize) -> Mesh {
    mesh_with(name, holders, holders).await
}

impl Mesh {
    /// Pulls object `id` with the digest of `bytes` from `holders` into a fresh file.
    async fn pull(
        &self,
        holders: &[PeerId],
        id: ObjectId,
        bytes: &[u8],
    ) -> (Result<(), ObjectError>, PathBuf) {
        let dest = self.dir.join(format!("{}.partial", id.to_hex()));
        let f = std::fs::File::create(&dest).unwrap();
        f.set_len(bytes.len() as u64).unwrap();
        drop(f);
        let mut control = self.puller.streams();
        let progress = Progress::default();
        let routes = if self.lanes {
            self.puller.lane_routes()
        } else {
            Default::default()
        };
        let r = objects::pull(
            &mut control,
            self.protocol.clone(),
            &PeerLimits::default(),
            &routes,
            holders,
            id,
            bytes.len() as u64,
            Digest::of(bytes),
            &dest,
            &progress,
        )
        .await;
        if r.is_ok() {
            // Every byte was counted (pieces pulled again count again).
            assert!(progress.get() >= bytes.len() as u64);
        }
        (r, dest)
    }

    /// Object bytes the holders sent on their lanes.
    fn lane_bytes(&self) -> u64 {
        self.holders
            .iter()
            .map(|h| h.net.lane().expect("a holder's lane").bytes_sent())
            .sum()
    }

    fn ids(&self, which: &[usize]) -> Vec<PeerId> {
        which.iter().map(|&i| self.holders[i].id()).collect()
    }

    /// Every serving stream has ended and dropped its pin.
    async fn unpinned(&self) {
        wait(Duration::from_secs(10), "every pin dropped", || {
            self.holders
                .iter()
                .all(|h| h.files.pinned.load(Ordering::SeqCst) == 0)
        })
        .await;
    }
}

fn assert_same(dest: &Path, bytes: &[u8]) {
    let got = std::fs::read(dest).unwrap();
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "the pulled bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mib_object_is_pulled_byte_exact_from_one_holder() {
    for lanes in [true, false] {
        let m = mesh_lanes(&format!("obj-one-{lanes}"), 1, 1, lanes).await;
        let bytes = data(40 * MIB + 12_345, 1);
        let id = ObjectId([1; 32]);
        m.holders[0].hold(id, &bytes);
        let (r, dest) = m.pull(&m.ids(&[0]), id, &bytes).await;
        r.unwrap();
        assert_same(&dest, &bytes);
        assert_eq!(m.holders[0].opens(), 1, "one stream for the whole object");
        let on_lanes = if lanes { bytes.len() as u64 } else { 0 };
        assert_eq!(m.lane_bytes(), on_lanes, "lanes {lanes}");
        m.unpinned().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_object_is_pulled_from_three_holders_at_once() {
    for lanes in [true, false] {
        let m = mesh_lanes(&format!("obj-three-{lanes}"), 3, 3, lanes).await;
        let bytes = data(100 * MIB + 777, 2);
        let id = ObjectId([2; 32]);
        for h in &m.holders {
            h.hold(id, &bytes);
        }
        let (r, dest) = m.pull(&m.ids(&[0, 1, 2]), id, &bytes).await;
        r.unwrap();
        assert_same(&dest, &bytes);
        for h in &m.holders {
            assert!(h.opens() >= 2, "every holder served pieces");
            let lane = h.net.lane().unwrap().bytes_sent();
            assert_eq!(lane > 0, lanes, "lanes {lanes}: {lane} bytes on the lane");
        }
        let on_lanes = if lanes { bytes.len() as u64 } else { 0 };
        assert_eq!(m.lane_bytes(), on_lanes, "lanes {lanes}");
        m.unpinned().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_cannot_be_reached_is_worked_around_on_the_stream() {
    let m = mesh("obj-no-lane", 1).await;
    let bytes = data(9 * MIB + 1, 30);
    let id = ObjectId([30; 32]);
    m.holders[0].hold(id, &bytes);
    // The lane listens on 127.0.0.1 only: at 127.0.0.2 its port is closed.
    let routes = m.puller.lane_routes();
    let holder = m.holders[0].id();
    routes.set(holder, "127.0.0.2".parse().unwrap());
    let (r, dest) = m.pull(&[holder], id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    assert_eq!(m.lane_bytes(), 0, "every byte came on the stream");
    assert_eq!(
        m.holders[0].opens(),
        2,
        "asked once on the lane, once without"
    );
    // Now known unreachable: the next pull does not try the lane.
    assert_eq!(routes.route(&holder), None);
    let (r, dest) = m.pull(&[holder], id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    assert_eq!(m.holders[0].opens(), 3);
    m.unpinned().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_that_lack_the_object_or_hold_a_corrupt_copy_are_worked_around() {
    let m = mesh("obj-faulty", 3).await;
    // The second holder lacks it: the others pull its share.
    let missing = data(48 * MIB, 3);
    let mid = ObjectId([3; 32]);
    m.holders[0].hold(mid, &missing);
    m.holders[2].hold(mid, &missing);
    let (r, dest) = m.pull(&m.ids(&[0, 1, 2]), mid, &missing).await;
    r.unwrap();
    assert_same(&dest, &missing);
    // The third holder's copy is corrupt: the digest catches it, and a good copy is pulled.
    let bytes = data(40 * MIB + 3, 4);
    let cid = ObjectId([4; 32]);
    m.holders[0].hold(cid, &bytes);
    m.holders[1].hold(cid, &bytes);
    m.holders[2].hold_corrupt(cid, &bytes);
    let (r, dest) = m.pull(&m.ids(&[2, 0, 1]), cid, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    // One lacks it and one is corrupt (and asked first): the last one serves it.
    let both = data(20 * MIB, 5);
    let bid = ObjectId([5; 32]);
    m.holders[0].hold_corrupt(bid, &both);
    m.holders[2].hold(bid, &both);
    let (r, dest) = m.pull(&m.ids(&[0, 1, 2]), bid, &both).await;
    r.unwrap();
    assert_same(&dest, &both);
    m.unpinned().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_copies_alone_fail_the_pull_as_corrupted() {
    let m = mesh("obj-corrupt", 2).await;
    let small = data(3 * MIB + 1, 6);
    let sid = ObjectId([6; 32]);
    m.holders[0].hold_corrupt(sid, &small);
    let (r, _) = m.pull(&m.ids(&[0]), sid, &small).await;
    match r {
        Err(ObjectError::Corrupted {
            id,
            peers,
            found,
            wanted,
        }) => {
            assert_eq!(id, sid);
            assert_eq!(peers, m.ids(&[0]));
            assert_eq!(wanted, Digest::of(&small));
            assert_ne!(found, wanted);
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // Two holders, both corrupt, pulled in parallel then one by one: each is named.
    let big = data(24 * MIB, 7);
    let bid = ObjectId([7; 32]);
    m.holders[0].hold_corrupt(bid, &big);
    m.holders[1].hold_corrupt(bid, &big);
    let (r, _) = m.pull(&m.ids(&[0, 1]), bid, &big).await;
    match r {
        Err(ObjectError::AllFailed { id, errors }) => {
            assert_eq!(id, bid);
            let blamed: Vec<Vec<PeerId>> = errors
                .iter()
                .filter_map(|e| match e {
                    ObjectError::Corrupted { peers, .. } => Some(peers.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(blamed.len(), errors.len(), "{errors:?}");
            assert!(blamed.contains(&m.ids(&[0])) && blamed.contains(&m.ids(&[1])));
        }
        other => panic!("expected AllFailed, got {other:?}"),
    }
    m.unpinned().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_without_the_object_answers_not_found() {
    // The second peer does not serve objects at all.
    let m = mesh_with("obj-notfound", 2, 1).await;
    let bytes = data(MIB, 8);
    let id = ObjectId([8; 32]);
    let (r, _) = m.pull(&m.ids(&[0]), id, &bytes).await;
    match r {
        Err(ObjectError::NotFound(p)) => assert_eq!(p, m.holders[0].id()),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let (r, _) = m.pull(&m.ids(&[1]), id, &bytes).await;
    match r {
        Err(ObjectError::Refused(p)) => assert_eq!(p, m.holders[1].id()),
        other => panic!("expected Refused, got {other:?}"),
    }
    let (r, _) = m.pull(&m.ids(&[0, 1]), id, &bytes).await;
    let e = r.unwrap_err();
    assert!(matches!(e, ObjectError::AllFailed { ref errors, .. } if errors.len() == 2));
    assert!(!e.is_not_found(), "one refused: not known to be absent");
    let (r, _) = m.pull(&[], id, &bytes).await;
    assert!(matches!(r, Err(ObjectError::NoHolders(i)) if i == id));
    // Held by the first, with another size or digest than asked for.
    m.holders[0].hold(id, &bytes);
    let other = data(MIB, 9);
    let (r, _) = m.pull(&m.ids(&[0]), id, &other).await;
    assert!(
        matches!(r, Err(ObjectError::Mismatch { ref peer, .. }) if *peer == m.holders[0].id()),
        "{r:?}"
    );
}

/// Opens a raw stream on the object protocol, writes `bytes`, and returns what comes back
/// until the holder closes (or a second passes).
async fn raw(m: &Mesh, holder: PeerId, bytes: &[u8]) -> Vec<u8> {
    let mut control = m.puller.streams();
    let mut s = control
        .open_stream(holder, m.protocol.clone())
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.flush().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
    out
}

fn request(id: ObjectId, offset: u64, len: u64) -> Vec<u8> {
    let lane = false;
    framed::encode(
        &ObjectRequest {
            id,
            offset,
            len,
            lane,
        },
        objects::MAX_HEADER,
    )
    .unwrap()
}

async fn answer(bytes: &[u8]) -> (ObjectResponse, Vec<u8>) {
    let (header, used) = frame::decode_frame(bytes, objects::MAX_HEADER)
        .unwrap()
        .expect("a whole header");
    (header, bytes[used..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_odd_ranges_leave_the_server_serving() {
    let m = mesh("obj-garbage", 1).await;
    let h = m.holders[0].id();
    let bytes = data(2 * MIB + 5, 10);
    let id = ObjectId([10; 32]);
    m.holders[0].hold(id, &bytes);
    let noise = data(4096, 11);
    // A well-formed frame (the length prefix of `shoal_protocol::frame`) of 40 bytes that
    // are no request.
    let mut bad_body = 40u32.to_le_bytes().to_vec();
    bad_body.extend_from_slice(&noise[..40]);
    assert!(frame::split_frame(&bad_body, 1024).unwrap().is_some());
    for garbage in [
        &noise[..],
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..],
        &bad_body[..],
        &request(id, 0, 10)[..5],
        &[][..],
    ] {
        assert!(
            raw(&m, h, garbage).await.is_empty(),
            "garbage gets no answer"
        );
    }
    // A range in the middle, exactly; a range clipped at the end; size and digest alone; an
    // empty range at the end; a range past the end.
    let (resp, rest) = answer(&raw(&m, h, &request(id, 1000, 5000)).await).await;
    let found = ObjectResponse::Found {
        size: bytes.len() as u64,
        digest: Digest::of(&bytes),
        lane: None,
    };
    assert_eq!(resp, found);
    assert_eq!(rest, &bytes[1000..6000]);
    let tail = bytes.len() as u64 - 10;
    let (resp, rest) = answer(&raw(&m, h, &request(id, tail, u64::MAX)).await).await;
    assert_eq!(
        (resp, rest.as_slice()),
        (found.clone(), &bytes[tail as usize..])
    );
    let (resp, rest) = answer(&raw(&m, h, &request(id, 0, 0)).await).await;
    assert_eq!((resp, rest.len()), (found.clone(), 0));
    let end = bytes.len() as u64;
    let (resp, rest) = answer(&raw(&m, h, &request(id, end, 100)).await).await;
    assert_eq!((resp, rest.len()), (found.clone(), 0));
    let (resp, rest) = answer(&raw(&m, h, &request(id, end + 1, 100)).await).await;
    assert_eq!(
        (resp, rest.len()),
        (ObjectResponse::OutOfRange { size: end }, 0)
    );
    let (resp, _) = answer(&raw(&m, h, &request(ObjectId([0; 32]), 0, 1)).await).await;
    assert_eq!(resp, ObjectResponse::NotFound);
    // A real pull still works.
    let (r, dest) = m.pull(&[h], id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    m.unpinned().await;
}

/// Serves object requests on `protocol` from `bytes`, but sends only half of each range
/// before closing the stream.
fn serve_half(net: &NetHandle, protocol: StreamProtocol, bytes: Arc<Vec<u8>>) {
    let mut incoming = net.streams().accept(protocol).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let req: ObjectRequest = framed::read_one(&mut s, 1024).await.unwrap();
                let header = ObjectResponse::Found {
                    size: bytes.len() as u64,
                    digest: Digest::of(&bytes),
                    lane: None,
                };
                framed::write(&mut s, &header, 1024).await.unwrap();
                let end = (req.offset + req.len).min(bytes.len() as u64);
                let half = req.offset + (end - req.offset) / 2;
                let _ = s
                    .write_all(&bytes[req.offset as usize..half as usize])
                    .await;
                let _ = s.close().await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_breaks_off_is_taken_over_where_it_stopped() {
    // Holder 0 breaks off half-way through every range; 1 and 2 serve properly.
    let m = mesh_with("obj-breaks", 3, 0).await;
    let bytes = Arc::new(data(36 * MIB + 99, 12));
    let id = ObjectId([12; 32]);
    serve_half(&m.holders[0].net, m.protocol.clone(), bytes.clone());
    for h in &m.holders[1..] {
        let lane = h.net.lane();
        objects::spawn_server(h.net.streams(), m.protocol.clone(), h.files.clone(), lane).unwrap();
        h.hold(id, &bytes);
    }
    // One stream at a time (a small object): holder 1 continues from the middle.
    let small = data(5 * MIB + 1, 13);
    let sid = ObjectId([13; 32]);
    let small_half = Arc::new(small.clone());
    let small_protocol = StreamProtocol::new("/shoal/obj-breaks/obj-test-small/1");
    serve_half(&m.holders[0].net, small_protocol.clone(), small_half);
    objects::spawn_server(
        m.holders[1].net.streams(),
        small_protocol.clone(),
        m.holders[1].files.clone(),
        m.holders[1].net.lane(),
    )
    .unwrap();
    m.holders[1].hold(sid, &small);
    let dest = m.dir.join("small");
    std::fs::File::create(&dest)
        .unwrap()
        .set_len(small.len() as u64)
        .unwrap();
    let mut control = m.puller.streams();
    objects::pull(
        &mut control,
        small_protocol,
        &PeerLimits::default(),
        &m.puller.lane_routes(),
        &m.ids(&[0, 1]),
        sid,
        small.len() as u64,
        Digest::of(&small),
        &dest,
        &Progress::default(),
    )
    .await
    .unwrap();
    assert_same(&dest, &small);
    assert_eq!(m.holders[1].opens(), 1);
    // In pieces: the broken-off pieces are finished by the others, their hashes carried over.
    let (r, dest) = m.pull(&m.ids(&[0, 1, 2]), id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    m.unpinned().await;
}

/// Serves `files` on `protocol`, but drops (resets) the first `lose` streams unread, as
/// libp2p-stream does with an inbound stream that finds its acceptor's channel full.
/// Returns the count of streams that arrived.
fn serve_losing_first(
    net: &NetHandle,
    protocol: StreamProtocol,
    files: Arc<Files>,
    lose: usize,
) -> Arc<AtomicUsize> {
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = arrived.clone();
    let mut incoming = net.streams().accept(protocol).unwrap();
    tokio::spawn(async move {
        while let Some((_, s)) = incoming.next().await {
            if count.fetch_add(1, Ordering::SeqCst) < lose {
                drop(s);
                continue;
            }
            let files = files.clone();
            tokio::spawn(async move {
                if let Err(e) = objects::serve(s, &*files).await {
                    eprintln!("not served: {e}");
                }
            });
        }
    });
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_streams_are_lost_is_asked_again() {
    // Issue 12 item 5: a stream reset before the answer is no reason to give up on the holder.
    let m = mesh_with("obj-lost", 1, 0).await;
    let bytes = data(5 * MIB + 3, 20);
    let id = ObjectId([20; 32]);
    m.holders[0].hold(id, &bytes);
    let lose = objects::ATTEMPTS_PER_HOLDER as usize - 1;
    let arrived = serve_losing_first(
        &m.holders[0].net,
        m.protocol.clone(),
        m.holders[0].files.clone(),
        lose,
    );
    let (r, dest) = m.pull(&m.ids(&[0]), id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    assert_eq!(arrived.load(Ordering::SeqCst), lose + 1);
    assert_eq!(m.holders[0].opens(), 1);
    m.unpinned().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_loses_every_stream_is_given_up_after_its_attempts() {
    let m = mesh_with("obj-lost-all", 1, 0).await;
    let bytes = data(MIB, 21);
    let id = ObjectId([21; 32]);
    m.holders[0].hold(id, &bytes);
    let arrived = serve_losing_first(
        &m.holders[0].net,
        m.protocol.clone(),
        m.holders[0].files.clone(),
        usize::MAX,
    );
    let (r, _) = m.pull(&m.ids(&[0]), id, &bytes).await;
    match r {
        Err(ObjectError::AllFailed { errors, .. }) => {
            assert_eq!(errors.len(), objects::ATTEMPTS_PER_HOLDER as usize);
            assert!(
                errors.iter().all(ObjectError::is_retryable),
                "every attempt lost its stream: {errors:?}"
            );
        }
        other => panic!("expected every attempt to fail, got {other:?}"),
    }
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        objects::ATTEMPTS_PER_HOLDER as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_pull_asks_again_holders_whose_streams_were_lost() {
    // Both holders lose their first stream: neither is given up, and the pieces arrive.
    let m = mesh_with("obj-lost-par", 2, 0).await;
    let bytes = data(objects::PARALLEL_MIN as usize + 5 * MIB + 1, 22);
    let id = ObjectId([22; 32]);
    let mut arrived = Vec::new();
    for h in &m.holders {
        h.hold(id, &bytes);
        arrived.push(serve_losing_first(
            &h.net,
            m.protocol.clone(),
            h.files.clone(),
            1,
        ));
    }
    let (r, dest) = m.pull(&m.ids(&[0, 1]), id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    for a in &arrived {
        assert!(
            a.load(Ordering::SeqCst) >= 2,
            "every holder was asked again"
        );
    }
    m.unpinned().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_brings_nothing_is_worked_around_on_the_stream() {
    // Something else answers at the lane's address: it takes the connection and closes it.
    let m = mesh("obj-mute-lane", 1).await;
    let bytes = data(6 * MIB + 5, 31);
    let id = ObjectId([31; 32]);
    m.holders[0].hold(id, &bytes);
    let port = m.holders[0].net.lane().unwrap().port();
    let mute = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .unwrap();
    let closer = tokio::spawn(async move {
        let (socket, _) = mute.accept().await.unwrap();
        drop(socket);
    });
    let holder = m.holders[0].id();
    m.puller
        .lane_routes()
        .set(holder, "127.0.0.2".parse().unwrap());
    let (r, dest) = m.pull(&[holder], id, &bytes).await;
    r.unwrap();
    assert_same(&dest, &bytes);
    tokio::time::timeout(Duration::from_secs(5), closer)
        .await
        .expect("the lane was tried")
        .unwrap();
    assert_eq!(m.lane_bytes(), 0, "every byte came on the stream");
    assert_eq!(
        m.holders[0].opens(),
        2,
        "asked once on the lane, once without"
    );
    m.unpinned().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_pull_on_lanes_survives_a_holder_cut_off_halfway() {
    // Issue 16: pieces on the holders' lanes; holder 0's connection is closed once half the
    // object is in. Its lane ends with the stream that controls it, and the rest of its
    // pieces come from holder 1 (or from holder 0 again, redialled), checked as a whole.
    let m = mesh("obj-cut", 2).await;
    let bytes = data(128 * MIB + 4097, 40);
    let id = ObjectId([40; 32]);
    for h in &m.holders {
        h.hold(id, &bytes);
    }
    let total = bytes.len() as u64;
    let dest = m.dir.join("cut.partial");
    std::fs::File::create(&dest)
        .unwrap()
        .set_len(total)
        .unwrap();
    let progress = Progress::default();
    let watched = progress.clone();
    let (puller, victim) = (m.puller.clone(), m.holders[0].id());
    let cutter = tokio::spawn(async move {
        loop {
            let got = watched.get();
            if got >= total / 2 {
                puller.disconnect(victim);
                return got;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut control = m.puller.streams();
    let pulled = objects::pull(
        &mut control,
        m.protocol.clone(),
        &PeerLimits::default(),
        &m.puller.lane_routes(),
        &m.ids(&[0, 1]),
        id,
        total,
        Digest::of(&bytes),
        &dest,
        &progress,
    )
    .await;
    let at_cut = cutter.await.unwrap();
    pulled.unwrap();
    assert_same(&dest, &bytes);
    assert!(
        at_cut < total,
        "the cut came after the last byte ({at_cut})"
    );
    // A range cut short counts no bytes on its lane: less than the object went whole.
    assert!(
        m.lane_bytes() < total,
        "no range was cut: {} bytes on lanes",
        m.lane_bytes()
    );
    m.unpinned().await;
}
