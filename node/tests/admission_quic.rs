//! Admission over QUIC (the `quic` feature): members of a mesh connect and see each other over
//! `/quic-v1`, a peer of another authority with the same mesh name gets no connection either
//! way, and a plain libp2p QUIC client gets no protocol. In-process peers on 127.0.0.1.
//!
//! `cargo test -p shoal-node --features quic --test admission_quic` (CI runs it).
#![cfg(feature = "quic")]

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, identity, ping, Multiaddr};
use shoal_node::auth::{Authority, JoinToken, Proof, Role};
use shoal_node::net::{self, NetConfig, NetHandle};

mod inproc;
use inproc::wait;

fn token(auth: &Authority) -> JoinToken {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    JoinToken {
        trust: auth.trust(),
        bootstrap: vec![],
        proof: Proof::Invite(Box::new(auth.invite(Role::Node, now - 60, now + 3600))),
    }
}

async fn quic_peer(token: JoinToken, peers: Vec<Multiaddr>) -> NetHandle {
    let mut c = NetConfig::new(token);
    c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    c.peers = peers;
    c.mdns = false;
    let h = net::start(identity::Keypair::generate_ed25519(), c)
        .await
        .unwrap();
    wait(Duration::from_secs(10), "a QUIC listen address", || {
        h.view().listen_addrs.iter().any(|a| a.contains("quic-v1"))
    })
    .await;
    h
}

fn quic_addr(h: &NetHandle) -> Multiaddr {
    h.view()
        .listen_addrs
        .iter()
        .find(|a| a.contains("quic-v1"))
        .unwrap()
        .parse()
        .unwrap()
}

fn sees(h: &NetHandle, other: &NetHandle) -> bool {
    let id = other.peer_id().to_string();
    h.view().peers.iter().any(|p| p.peer_id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_members_meet_and_a_stranger_gets_nothing() {
    let members = Authority::generate("quic").unwrap();
    let a = quic_peer(token(&members), vec![]).await;
    let b = quic_peer(token(&members), vec![quic_addr(&a)]).await;
    wait(Duration::from_secs(20), "a and b over QUIC", || {
        sees(&a, &b) && sees(&b, &a)
    })
    .await;
    // Same mesh name, another authority; it dials a, and c (a member) dials it.
    let strangers = Authority::generate("quic").unwrap();
    let x = quic_peer(token(&strangers), vec![quic_addr(&a)]).await;
    let c = quic_peer(token(&members), vec![quic_addr(&a), quic_addr(&x)]).await;
    wait(Duration::from_secs(20), "c joins", || {
        sees(&a, &c) && sees(&c, &a)
    })
    .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for m in [&a, &b, &c] {
            assert!(!sees(m, &x), "a member sees the stranger");
            assert!(!sees(&x, m), "the stranger sees a member");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(x.view().peers.is_empty());

    // A plain libp2p QUIC client: its connections close, and nothing answers on them.
    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Plain {
        identify: identify::Behaviour,
        ping: ping::Behaviour,
    }
    let mut swarm =
        libp2p::SwarmBuilder::with_existing_identity(identity::Keypair::generate_ed25519())
            .with_tokio()
            .with_quic()
            .with_behaviour(|k| Plain {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/shoal/quic/1.0.0".into(),
                    k.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
            })
            .unwrap()
            .build();
    let target = quic_addr(&a);
    let mut ended = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ended < 2 {
        swarm.dial(target.clone()).unwrap();
        loop {
            let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .expect("every dial ends in time");
            match ev {
                SwarmEvent::Behaviour(PlainEvent::Identify(identify::Event::Received {
                    ..
                })) => panic!("identify answered a client with no credential"),
                SwarmEvent::Behaviour(PlainEvent::Ping(ping::Event { result: Ok(_), .. })) => {
                    panic!("ping answered a client with no credential")
                }
                // QUIC's own handshake completes; the node then waits for the admission
                // stream, gets the client's protocol negotiation instead, and closes.
                SwarmEvent::ConnectionClosed { .. }
                | SwarmEvent::OutgoingConnectionError { .. } => {
                    ended += 1;
                    break;
                }
                _ => {}
            }
        }
    }
}
