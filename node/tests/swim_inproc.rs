//! Membership by SWIM on the real swarm, with many peers in one process over libp2p's memory
//! transport: views converge, a peer that stops (or vanishes) leaves every view within
//! seconds, and garbage on the membership protocol costs its sender its connection and
//! nobody else anything.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use shoal_node::core::swim::SwimConfig;
use shoal_node::net::{NetConfig, NetHandle};
use shoal_protocol::swim::{SwimHealth, SwimUpdate, SwimWire};
use shoal_protocol::{codec, frame};

mod inproc;

use inproc::{addr, start as peer, wait};

fn config(mesh: &str, peers: Vec<Multiaddr>) -> NetConfig {
    let mut c = inproc::memory_config(mesh, peers);
    c.swim = Some(SwimConfig::default());
    c
}

fn members_up(h: &NetHandle) -> usize {
    h.view().swim.map_or(0, |s| s.members_up as usize)
}

/// Whether `h`'s view (membership and reports alike) holds exactly `others`.
fn sees_exactly(h: &NetHandle, others: &[&NetHandle]) -> bool {
    let view = h.view();
    members_up(h) == others.len() + 1
        && view.peers.len() == others.len()
        && others.iter().all(|o| {
            let id = o.peer_id().to_string();
            view.peers.iter().any(|p| p.peer_id == id)
        })
}

fn converged(all: &[NetHandle]) -> bool {
    all.iter().all(|h| {
        let others: Vec<&NetHandle> = all.iter().filter(|o| o.peer_id() != h.peer_id()).collect();
        sees_exactly(h, &others)
    })
}

async fn mesh(name: &str, n: usize) -> Vec<NetHandle> {
    let first = peer(config(name, vec![])).await;
    let boot = addr(&first);
    let mut all = vec![first];
    for _ in 1..n {
        all.push(peer(config(name, vec![boot.clone()])).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_converge_and_peers_that_stop_or_vanish_leave_every_view() {
    let mut all = mesh("swim-twenty", 20).await;
    let start = Instant::now();
    wait(Duration::from_secs(60), "full views", || converged(&all)).await;
    eprintln!(
        "20 in-process peers under SWIM converged in {:?}",
        start.elapsed()
    );

    // One stops: it says so, and is gone from every view at once.
    let stopping = all.remove(7);
    let stopped_at = Instant::now();
    stopping.shutdown().await;
    wait(Duration::from_secs(10), "the stopped peer gone", || {
        converged(&all)
    })
    .await;
    let took = stopped_at.elapsed();
    eprintln!("a peer that stopped left every view in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // One vanishes (every handle dropped: its tasks end without a word). Its connections
    // close; the probes that follow find nobody.
    let vanishing = all.remove(11);
    let vanished_at = Instant::now();
    drop(vanishing);
    wait(Duration::from_secs(20), "the vanished peer gone", || {
        converged(&all)
    })
    .await;
    let took = vanished_at.elapsed();
    eprintln!("a peer that vanished left every view in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The rest stay: nobody alive was written off, and membership costs little.
    let status = all[0].view().swim.unwrap();
    assert_eq!(status.members_up, 18);
    assert_eq!(status.suspected, 0);
    eprintln!("peer 0's membership: {status:?}");
    assert!(status.sent > 0 && status.received > 0);
}

/// Opens a membership stream from `from` to `to` and writes `bytes`.
async fn send_raw(from: &NetHandle, to: PeerId, protocol: &str, bytes: &[u8]) {
    let mut control = from.streams();
    let proto = StreamProtocol::try_from_owned(protocol.to_string()).unwrap();
    let Ok(mut s) = control.open_stream(to, proto).await else {
        return;
    };
    // The receiver may reset the stream or drop the connection: either is fine here.
    if s.write_all(bytes).await.is_ok() {
        drop(s.close().await);
    }
    let mut buf = [0u8; 16];
    drop(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_out_of_bounds_messages_disconnect_their_sender_only() {
    let mut all = mesh("swim-rough", 3).await;
    wait(Duration::from_secs(30), "three peers", || converged(&all)).await;
    let attacker = peer(config("swim-rough", vec![addr(&all[0])])).await;
    all.push(attacker);
    wait(Duration::from_secs(30), "four peers", || converged(&all)).await;
    let attacker = all.pop().unwrap();
    let target = all[0].peer_id();
    let protocol = "/shoal/swim-rough/swim/1";
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 251) as u8).collect();
    let oversized = [0xffu8, 0xff, 0xff, 0x7f, 1, 2, 3];
    // Well formed, but 300 updates (the bound is 256).
    let too_many = SwimWire::Gossip {
        updates: vec![
            SwimUpdate {
                peer: target.to_bytes(),
                incarnation: u64::MAX,
                health: SwimHealth::Dead,
                by: None,
                addrs: Vec::new(),
            };
            300
        ],
    };
    let mut framed = Vec::new();
    frame::encode_frame(&mut framed, &too_many, 1 << 20).unwrap();
    // Within bounds, but naming a peer id that is not one.
    let bad_id = codec::encode(&SwimWire::Gossip {
        updates: vec![SwimUpdate {
            peer: vec![7; 38],
            incarnation: 1,
            health: SwimHealth::Alive,
            by: None,
            addrs: Vec::new(),
        }],
    })
    .unwrap();
    let mut bad_id_framed = (bad_id.len() as u32).to_le_bytes().to_vec();
    bad_id_framed.extend(bad_id);
    for (i, bytes) in [&noise[..], &oversized[..], &framed[..], &bad_id_framed[..]]
        .into_iter()
        .enumerate()
    {
        // The attacker may have been disconnected by the last one: wait until it is back.
        wait(Duration::from_secs(10), "the attacker connected", || {
            all[0]
                .view()
                .peers
                .iter()
                .any(|p| p.peer_id == attacker.peer_id().to_string() && p.connected)
        })
        .await;
        send_raw(&attacker, target, protocol, bytes).await;
        wait(Duration::from_secs(10), "the attacker disconnected", || {
            all[0].view().bad_peers == i as u64 + 1
        })
        .await;
    }
    // Nobody believed the forged death of the target, and the three still see each other
    // (the attacker may come and go: it is a member, only its messages were refused).
    let ids: Vec<String> = all.iter().map(|h| h.peer_id().to_string()).collect();
    wait(
        Duration::from_secs(10),
        "the three still see each other",
        || {
            all.iter().all(|h| {
                let v = h.view();
                ids.iter()
                    .filter(|id| **id != v.peer_id)
                    .all(|id| v.peers.iter().any(|p| p.peer_id == *id))
            })
        },
    )
    .await;
    for h in &all {
        assert!(h.view().swim.unwrap().members_up >= 3);
    }
}
