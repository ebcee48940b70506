//! A program's embedded node joins a mesh of real `shoal node` processes as a full peer
//! (`SHOAL_PEERS` / `InitOptions::peers`).

use std::time::{Duration, Instant};

use shoal::InitOptions;
use shoal_tests::{NodeOptions, NodeProcess};

#[shoal::remote]
fn one() -> u32 {
    1
}

#[test]
fn an_embedded_node_is_a_full_peer() {
    let daemon = NodeProcess::start(NodeOptions::new().mesh("embedded").cpus(1.0)).unwrap();
    let shoal = shoal::init_with(InitOptions {
        force_embedded: true,
        peers: vec![daemon.listen_addr().to_string()],
        join: Some(shoal_tests::authority::token("embedded").unwrap()),
        ..Default::default()
    })
    .unwrap();
    let me = shoal.status().unwrap().mesh.expect("a mesh peer").peer_id;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mine = shoal.status().unwrap().mesh.unwrap();
        let theirs = daemon.view().unwrap();
        let sees_daemon = mine
            .peers
            .iter()
            .any(|p| p.peer_id == daemon.peer_id() && p.total.get_milli("CPU") == 1000);
        if sees_daemon && theirs.contains(&me) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            daemon.with_log(format!("no mutual view: {mine:?} / {theirs:?}"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And it still runs tasks locally.
    assert_eq!(one.remote().get_blocking().unwrap(), 1);
}
