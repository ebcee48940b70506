//! Lineage reconstruction on a real network (issue 12): large results left at a peer that
//! is then killed are made again by their owner (recursively: the arguments they were made
//! from were lost with them), and read with the right bytes. This test process is the
//! driver, attached to node 0 of a lab; one test per binary (the SDK attaches once).

use std::time::Duration;

use shoal::{Bytes, InitOptions, ObjectRef};
use shoal_tests::netlab::skip_unless_available;
use shoal_tests::{Lab, NodeOptions};

const LEN: usize = 4 << 20;

/// 4 MiB made from `seed`.
#[shoal::remote]
fn block(seed: u64) -> Bytes {
    // Long enough that the tasks spread over the three nodes.
    std::thread::sleep(Duration::from_millis(40));
    Bytes(pattern(seed))
}

/// `prev` with `step` added to every byte.
#[shoal::remote]
fn grow(prev: Bytes, step: u8) -> Bytes {
    std::thread::sleep(Duration::from_millis(40));
    Bytes(prev.0.iter().map(|b| b.wrapping_add(step)).collect())
}

fn pattern(seed: u64) -> Vec<u8> {
    (0..LEN as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8)
        .collect()
}

/// The location node 0 gives each of `ids` (`shoal objects --json`): `remote` while a
/// result is left at the peer that made it.
fn locations(lab: &Lab, ids: &[String]) -> Vec<String> {
    let socket = lab.node(0).socket();
    let out = lab
        .node(0)
        .run_cli([
            "objects".as_ref(),
            "--json".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let objects: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    ids.iter()
        .map(|id| {
            objects
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["id"].as_str() == Some(id))
                .map_or_else(
                    || "gone".to_string(),
                    |o| o["location"].as_str().unwrap_or("?").to_string(),
                )
        })
        .collect()
}

#[test]
fn results_lost_with_a_killed_peer_are_made_again_from_their_lineage() {
    if !skip_unless_available("netlab_lineage") {
        return;
    }
    // Node 0, the driver's, has no CPU: every task runs at node 1 or 2 and leaves its
    // result there.
    let mut lab = Lab::start_with(3, |i| {
        let mut o = NodeOptions::new()
            .mesh("netlab-lineage")
            .failure_timeout(3.0)
            .cpus(if i == 0 { 0.0 } else { 1.0 });
        o.store_bytes = 512 << 20;
        o
    })
    .unwrap();
    lab.mesh().wait_converged(Duration::from_secs(30)).unwrap();
    shoal::init_with(InitOptions {
        socket: Some(lab.node(0).socket()),
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();

    // Chains of three: block, then grow twice. Only the last of each is held; nothing reads
    // them, so each stays where it was made.
    let chains = 12u64;
    let mut lasts: Vec<ObjectRef<Bytes>> = Vec::new();
    for c in 0..chains {
        let a = block.remote(c);
        let b = grow.remote(&a, 1);
        lasts.push(grow.remote(&b, 2));
    }
    let ids: Vec<String> = lasts.iter().map(|r| r.id().to_string()).collect();
    shoal_tests::wait_for(Duration::from_secs(120), "every chain to be made", || {
        Ok(locations(&lab, &ids)
            .iter()
            .all(|l| l == "remote")
            .then_some(()))
    })
    .unwrap();
    let held_at_2 = lab.node(2).status()["objects"]["shared_count"]
        .as_u64()
        .unwrap();
    assert!(held_at_2 > 0, "node 2 made none of the results");

    // Node 2 dies, with what it held.
    let victim = lab.node(2).peer_id().to_owned();
    lab.kill(2).unwrap();
    lab.mesh()
        .wait_gone(&victim, Duration::from_secs(30))
        .unwrap();
    let started = std::time::Instant::now();
    for (c, r) in lasts.iter().enumerate() {
        let v = r
            .get_blocking_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("chain {c}: {e}"));
        let want: Vec<u8> = pattern(c as u64)
            .iter()
            .map(|b| b.wrapping_add(3))
            .collect();
        assert!(v.0 == want, "chain {c}: wrong bytes");
    }
    let log = std::fs::read_to_string(lab.node(0).log_path()).unwrap();
    let remade = log.matches("making it again from its lineage").count();
    println!(
        "node 2 held {held_at_2} results when it was killed; every chain was read back in {:?}, \
         {remade} objects made again from their lineage",
        started.elapsed()
    );
    assert!(remade > 0, "{}", lab.node(0).with_log("node 0"));
    shoal::shutdown();
}
