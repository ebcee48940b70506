//! In-process peers for the network tests: start one, wait for something, its address.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use libp2p::{identity, Multiaddr};
use shoal_node::net::{self, NetConfig, NetHandle};

/// Polls `cond` every 20 ms until it holds; panics after `limit`, naming `what`.
pub async fn wait(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A peer of mesh `mesh` on the memory transport, bootstrapped from `peers`, mDNS off,
/// reporting its load every 300 ms.
pub fn memory_config(mesh: &str, peers: Vec<Multiaddr>) -> NetConfig {
    let mut c = NetConfig::new(shoal_node::auth::testing::token(mesh));
    c.transport = net::TransportKind::Memory;
    c.listen = vec!["/memory/0".parse().unwrap()];
    c.peers = peers;
    c.mdns = false;
    c.report_interval = Duration::from_millis(300);
    c
}

/// Starts a peer with config `c` and waits until it listens.
pub async fn start(c: NetConfig) -> NetHandle {
    let h = net::start(identity::Keypair::generate_ed25519(), c)
        .await
        .unwrap();
    wait(Duration::from_secs(10), "a listen address", || {
        !h.view().listen_addrs.is_empty()
    })
    .await;
    h
}

/// The first address `h` listens on.
pub fn addr(h: &NetHandle) -> Multiaddr {
    h.view().listen_addrs[0].parse().unwrap()
}
