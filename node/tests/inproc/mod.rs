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
