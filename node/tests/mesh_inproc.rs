//! Many peers in one process over libp2p's memory transport: convergence of the views, the
//! DHT across peers that never meet, and garbage on every protocol.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{identity, Multiaddr, PeerId, StreamProtocol};
use shoal_node::net::{self, NetHandle, TransportKind};
use shoal_protocol::mesh::{PeerRequest, PeerResponse};

mod inproc;

use inproc::{addr, memory_config as config, start as peer, wait};

fn sees(h: &NetHandle, others: &[&NetHandle]) -> bool {
    let view = h.view();
    others.iter().all(|o| {
        let id = o.peer_id().to_string();
        view.peers
            .iter()
            .any(|p| p.peer_id == id && p.report.is_some())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_converge_to_full_views() {
    let first = peer(config("twenty", vec![])).await;
    let boot = addr(&first);
    let mut all = vec![first];
    for _ in 1..20 {
        all.push(peer(config("twenty", vec![boot.clone()])).await);
    }
    let start = Instant::now();
    wait(Duration::from_secs(60), "full views", || {
        all.iter().all(|h| {
            h.view().peers.len() == 19 && {
                let others: Vec<&NetHandle> =
                    all.iter().filter(|o| o.peer_id() != h.peer_id()).collect();
                sees(h, &others)
            }
        })
    })
    .await;
    eprintln!("20 in-process peers converged in {:?}", start.elapsed());
    // Every report carries the reporter's resources and platform.
    let v = all[7].view();
    assert!(v
        .peers
        .iter()
        .all(|p| p.report.as_ref().is_some_and(|r| !r.target.is_empty())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_found_by_a_peer_that_never_met_its_writer() {
    let b = peer(config("dht", vec![])).await;
    let (ka, kc) = (
        identity::Keypair::generate_ed25519(),
        identity::Keypair::generate_ed25519(),
    );
    let (ida, idc) = (ka.public().to_peer_id(), kc.public().to_peer_id());
    let mut ca = config("dht", vec![addr(&b)]);
    ca.blocked = vec![idc];
    let mut cc = config("dht", vec![addr(&b)]);
    cc.blocked = vec![ida];
    let a = net::start(ka, ca).await.unwrap();
    let c = net::start(kc, cc).await.unwrap();
    wait(Duration::from_secs(20), "b sees a and c", || {
        sees(&b, &[&a, &c])
    })
    .await;
    a.put_record(b"actor:42".to_vec(), b"on peer a, incarnation 0".to_vec())
        .await
        .unwrap();
    let found = c.get_record(b"actor:42".to_vec()).await.unwrap();
    assert_eq!(found.as_deref(), Some(&b"on peer a, incarnation 0"[..]));
    assert_eq!(c.get_record(b"actor:43".to_vec()).await.unwrap(), None);
    // Providers too: a announces an object; c finds a as its provider.
    a.start_providing(b"object:7".to_vec());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let providers = c.get_providers(b"object:7".to_vec()).await.unwrap();
        if providers.contains(&ida) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no provider found: {providers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a and c never connected.
    assert!(!a
        .view()
        .peers
        .iter()
        .any(|p| p.peer_id == idc.to_string() && p.connected));
    assert!(!c
        .view()
        .peers
        .iter()
        .any(|p| p.peer_id == ida.to_string() && p.connected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_mesh_never_join() {
    let a = peer(config("blue", vec![])).await;
    let b = peer(config("blue", vec![addr(&a)])).await;
    let x = peer(config("green", vec![addr(&a)])).await;
    wait(Duration::from_secs(20), "a and b", || {
        sees(&a, &[&b]) && sees(&b, &[&a])
    })
    .await;
    // A few report intervals later, the green peer is in no blue view and sees no one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let xid = x.peer_id().to_string();
    assert!(!a.view().peers.iter().any(|p| p.peer_id == xid));
    assert!(!b.view().peers.iter().any(|p| p.peer_id == xid));
    assert!(x.view().peers.is_empty());
    // And asking a blue peer over the control protocol as green is refused.
    assert!(x
        .request(
            a.peer_id(),
            PeerRequest::Ping {
                mesh: "green".into()
            }
        )
        .await
        .is_err());
}

/// Opens a raw stream to `to` on `protocol` and writes `bytes`, then reads until the remote
/// closes or a second passes.
async fn garbage(from: &NetHandle, to: PeerId, protocol: &str, bytes: &[u8]) {
    let mut control = from.streams();
    let proto = StreamProtocol::try_from_owned(protocol.to_string()).unwrap();
    let Ok(mut s) = control.open_stream(to, proto).await else {
        return;
    };
    let _ = s.write_all(bytes).await;
    let _ = s.flush().await;
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_on_every_protocol_leave_the_mesh_working() {
    let a = peer(config("rough", vec![])).await;
    let b = peer(config("rough", vec![addr(&a)])).await;
    let attacker = peer(config("rough", vec![addr(&a)])).await;
    wait(Duration::from_secs(20), "a, b and the attacker", || {
        sees(&a, &[&b, &attacker]) && sees(&b, &[&a])
    })
    .await;
    a.put_record(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 251) as u8).collect();
    let oversized = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    for protocol in [
        "/shoal/rough/rpc/1",
        "/shoal/rough/kad/1.0.0",
        "/shoal/rough/bulk/1",
        "/meshsub/1.1.0",
        "/meshsub/1.2.0",
        "/ipfs/id/1.0.0",
        "/ipfs/id/push/1.0.0",
        "/ipfs/ping/1.0.0",
    ] {
        garbage(&attacker, a.peer_id(), protocol, &noise).await;
        garbage(&attacker, a.peer_id(), protocol, &oversized).await;
    }
    // The mesh still works: b still sees a, a answers b, the DHT answers.
    assert_eq!(
        b.request(
            a.peer_id(),
            PeerRequest::Ping {
                mesh: "rough".into()
            }
        )
        .await
        .unwrap(),
        PeerResponse::Pong {
            mesh: "rough".into()
        }
    );
    assert_eq!(
        b.get_record(b"k".to_vec()).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    wait(Duration::from_secs(5), "b keeps seeing a", || {
        sees(&b, &[&a])
    })
    .await;
    // A bulk transfer goes through after the garbage.
    let mut control = b.streams();
    let s = control
        .open_stream(a.peer_id(), StreamProtocol::new("/shoal/rough/bulk/1"))
        .await
        .unwrap();
    let chunk = vec![3u8; 1 << 16];
    assert_eq!(net::bulk::send(s, 5 << 20, &chunk).await.unwrap(), 5 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_reports_are_refused() {
    use shoal_protocol::mesh::LoadReport;
    use shoal_protocol::{codec, ResourceSet};
    let a = peer(config("strict", vec![])).await;
    let b = peer(config("strict", vec![addr(&a)])).await;
    let forger = peer(config("strict", vec![addr(&a)])).await;
    wait(Duration::from_secs(20), "all three", || {
        sees(&a, &[&b, &forger]) && sees(&b, &[&a])
    })
    .await;
    let report = |peer: Vec<u8>, mesh: &str, free: f64| LoadReport {
        peer,
        mesh: mesh.into(),
        seq: u64::MAX / 2,
        started_ms: u64::MAX / 2,
        total: ResourceSet::cpus(1.0),
        free: ResourceSet::cpus(free),
        queued: 0,
        running: 0,
        store_capacity: 1,
        store_used: 0,
        target: "forged".into(),
        binaries: vec![],
        addrs: vec![],
        accepts_code: true,
        labels: Vec::new(),
    };
    // Claiming to be b; of another mesh; more free than total; not a report at all.
    for bytes in [
        codec::encode(&report(b.peer_id().to_bytes(), "strict", 1.0)).unwrap(),
        codec::encode(&report(forger.peer_id().to_bytes(), "other", 1.0)).unwrap(),
        codec::encode(&report(forger.peer_id().to_bytes(), "strict", 9.0)).unwrap(),
        vec![0xde, 0xad, 0xbe, 0xef],
    ] {
        forger.publish_raw_report(bytes).await.unwrap();
    }
    // Nothing forged may ever show. A negative is watched for a while (several gossip
    // heartbeats), not waited for: b's view of a and a's view of b stay intact meanwhile.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for h in [&a, &b] {
        for p in h.view().peers {
            let r = p.report.expect("a report");
            assert_ne!(r.target, "forged", "{} took a forged report", h.peer_id());
        }
    }
    assert!(sees(&a, &[&b]) && sees(&b, &[&a]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_are_shipped_by_hash_and_checked() {
    use shoal_node::auth::code::{CodeRejection, Publisher};
    use shoal_node::net::code::CodeError;
    use shoal_protocol::BinaryId;
    use std::time::Instant;
    let publisher = Publisher::generate();
    let a = peer(config("code", vec![])).await;
    let mut b_config = config("code", vec![addr(&a)]);
    b_config.code_policy.trusted = vec![publisher.public()];
    let b = peer(b_config).await;
    let mut closed_config = config("code", vec![addr(&a)]);
    closed_config.code_shipping = false;
    let closed = peer(closed_config).await;
    wait(Duration::from_secs(20), "the three peers", || {
        sees(&b, &[&a, &closed])
    })
    .await;

    // a serves this very test executable under its blake3 id, signed by a publisher b
    // trusts; b fetches it once a sent it a task of it.
    let exe = std::env::current_exe().unwrap();
    let bytes = std::fs::read(&exe).unwrap();
    let id = BinaryId(*blake3::hash(&bytes).as_bytes());
    let target = shoal_node::net::target();
    let manifest = publisher.sign(id.0, &target, 1).encode();
    a.servable().insert(id, exe.clone(), Some(manifest.clone()));
    assert!(matches!(
        b.fetch_binary(a.peer_id(), id).await,
        Err(CodeError::NotAllowed(_))
    ));
    assert_eq!(a.servable().not_allowed(), 1);
    a.servable().grant(&id, b.peer_id(), Instant::now());
    // While it comes (tens of megabytes), b lists the transfer with its size and bytes so
    // far (`shoal status` shows that list).
    let mut seen = Vec::new();
    let path = {
        let watching = async {
            loop {
                seen.extend(
                    b.transfers()
                        .into_iter()
                        .filter(|t| t.what == shoal_protocol::Transfer::Binary(id)),
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            path = b.fetch_binary(a.peer_id(), id) => path.unwrap(),
            () = watching => unreachable!("the watcher never ends"),
        }
    };
    assert!(!seen.is_empty(), "the fetch was never listed");
    assert!(
        seen.iter()
            .all(|t| t.peers == vec![a.peer_id().to_string()]),
        "{seen:?}"
    );
    let sized: Vec<_> = seen.iter().filter(|t| t.total > 0).collect();
    assert!(
        sized
            .iter()
            .all(|t| t.total == bytes.len() as u64 && t.done <= t.total),
        "{sized:?}"
    );
    assert!(
        b.transfers().is_empty(),
        "an ended fetch is no longer listed"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o111,
        0o111
    );
    // b serves it onward with its manifest (to peers it sends a task of it).
    assert_eq!(b.servable().get(&id), Some((path.clone(), Some(manifest))));
    // Cached: a second fetch does not need a.
    assert_eq!(b.fetch_binary(a.peer_id(), id).await.unwrap(), path);
    assert_eq!(b.code_fetched_bytes(), bytes.len() as u64);

    // A rebuild (bytes inserted near the start, some changed in the middle, all after the
    // insertion shifted) comes by its chunks: b takes those it holds in the first build from
    // its own copy, and a sends the rest.
    let mut rebuilt = bytes.clone();
    rebuilt.splice(4096..4096, b"a new function".repeat(100));
    let middle = rebuilt.len() / 2;
    rebuilt[middle..middle + 64].fill(0xab);
    let rebuilt_path = std::env::temp_dir().join(format!("shoal-rebuilt-{}", std::process::id()));
    std::fs::write(&rebuilt_path, &rebuilt).unwrap();
    let rebuilt_id = BinaryId(*blake3::hash(&rebuilt).as_bytes());
    let signed = publisher.sign(rebuilt_id.0, &target, 1).encode();
    a.servable()
        .insert(rebuilt_id, rebuilt_path.clone(), Some(signed));
    a.servable().grant(&rebuilt_id, b.peer_id(), Instant::now());
    let got = b.fetch_binary(a.peer_id(), rebuilt_id).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), rebuilt);
    let sent = b.code_fetched_bytes() - bytes.len() as u64;
    assert!(
        sent * 20 < rebuilt.len() as u64,
        "{sent} of {} bytes sent for a rebuild",
        rebuilt.len()
    );
    std::fs::remove_file(&rebuilt_path).unwrap();

    // A file claimed under an id it does not hash to (a local program's claim) is never
    // shipped: the holder hashes it first. (The fetcher checks the bytes too.)
    let liar = BinaryId([9; 32]);
    a.servable().insert(
        liar,
        exe.clone(),
        Some(publisher.sign(liar.0, &target, 1).encode()),
    );
    a.servable().grant(&liar, b.peer_id(), Instant::now());
    assert!(matches!(
        b.fetch_binary(a.peer_id(), liar).await,
        Err(CodeError::NotFound(_))
    ));
    assert!(!path.with_file_name(liar.to_hex()).exists());
    // Unsigned, or signed by a stranger: rejected before a byte of it is read; nothing is
    // kept.
    let other = std::env::temp_dir().join(format!("shoal-closed-bin-{}", std::process::id()));
    std::fs::write(&other, b"#!/bin/sh\nexit 0\n").unwrap();
    let other_id = BinaryId(*blake3::hash(b"#!/bin/sh\nexit 0\n").as_bytes());
    a.servable().insert(other_id, other.clone(), None);
    a.servable().grant(&other_id, b.peer_id(), Instant::now());
    assert!(matches!(
        b.fetch_binary(a.peer_id(), other_id).await,
        Err(CodeError::Rejected(CodeRejection::Unsigned))
    ));
    let stranger = Publisher::generate();
    let theirs = stranger.sign(other_id.0, &target, 1).encode();
    a.servable().insert(other_id, other.clone(), Some(theirs));
    assert!(matches!(
        b.fetch_binary(a.peer_id(), other_id).await,
        Err(CodeError::Rejected(CodeRejection::UntrustedPublisher(_)))
    ));
    assert!(!path.with_file_name(other_id.to_hex()).exists());
    assert!(!path
        .with_file_name(other_id.to_hex())
        .with_extension("partial")
        .exists());
    // Unknown binaries, and peers that do not ship code.
    assert!(matches!(
        b.fetch_binary(a.peer_id(), BinaryId([7; 32])).await,
        Err(CodeError::NotFound(_))
    ));
    closed.servable().insert(other_id, other.clone(), None);
    assert!(matches!(
        b.fetch_binary(closed.peer_id(), other_id).await,
        Err(CodeError::Refused(_))
    ));
    std::fs::remove_file(&other).unwrap();
    assert!(matches!(
        closed.fetch_binary(a.peer_id(), id).await,
        Err(CodeError::Refused(_))
    ));
}

/// A private-network key is an outer layer under admission: members of the mesh that lack
/// the key (or have another) never connect to those that have it, over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_network_key_keeps_out_members_without_it() {
    use libp2p::pnet::PreSharedKey;
    let tcp = |psk: Option<PreSharedKey>, peers: Vec<Multiaddr>| {
        let mut c = config("pnet", peers);
        c.transport = TransportKind::Tcp;
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        c.psk = psk;
        c
    };
    let key = PreSharedKey::new([7; 32]);
    let a = peer(tcp(Some(key), vec![])).await;
    let b = peer(tcp(Some(key), vec![addr(&a)])).await;
    let other_key = peer(tcp(Some(PreSharedKey::new([8; 32])), vec![addr(&a)])).await;
    let no_key = peer(tcp(None, vec![addr(&a), addr(&b)])).await;
    wait(Duration::from_secs(20), "a and b", || {
        sees(&a, &[&b]) && sees(&b, &[&a])
    })
    .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for outsider in [&other_key, &no_key] {
            let id = outsider.peer_id().to_string();
            assert!(!a.view().peers.iter().any(|p| p.peer_id == id));
            assert!(!b.view().peers.iter().any(|p| p.peer_id == id));
            assert!(outsider.view().peers.is_empty());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
