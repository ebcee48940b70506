//! Work spills across a mesh of real `shoal node` processes on loopback: tasks run on peers
//! with room, binaries are shipped, objects move between peers, actors are called from any
//! peer, and a peer's death costs no results.
//!
//! Each scenario runs a driver program (this test binary again, attached to one node's
//! socket) so that every scenario has a process of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_tests::{Mesh, NodeOptions};

const ENV_SCENARIO: &str = "SHOAL_TEST_SPILL_SCENARIO";

/// Sleeps `ms`, then answers `2 * i` and the peer it ran on.
#[shoal::remote]
fn slow_double(i: u64, ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(ms));
    (2 * i, shoal::peer_id().unwrap_or_default())
}

/// Runs this test binary as a driver attached to `socket`, running `scenario`; returns the
/// lines it printed that start with `result `.
fn driver(socket: &Path, scenario: &str, args: &[(&str, String)]) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, scenario)
        .env("SHOAL_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in args {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "driver {scenario} failed: {stdout}");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("result "))
        .map(str::to_string)
        .collect()
}

/// The driver programs of the tests below (a no-op when run as a test of its own).
#[test]
fn driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    shoal::init().unwrap();
    let arg = |k: &str| std::env::var(k).unwrap();
    match scenario.as_str() {
        "tasks" => {
            let n: u64 = arg("N").parse().unwrap();
            let ms: u64 = arg("MS").parse().unwrap();
            let refs: Vec<_> = (0..n).map(|i| slow_double.remote(i, ms)).collect();
            for (i, r) in refs.into_iter().enumerate() {
                let (v, peer) = r.get_blocking().unwrap();
                assert_eq!(v, 2 * i as u64);
                println!("result {i} {peer}");
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn mesh(n: usize, name: &str, options: NodeOptions) -> Mesh {
    let mesh = Mesh::start_with(n, &options.mesh(name), None).unwrap();
    // Every node has every other's load report (views list only peers that reported).
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    mesh
}

#[test]
fn sixty_one_second_tasks_spread_over_three_one_cpu_peers() {
    let mesh = mesh(3, "spill-tasks", NodeOptions::new().cpus(1.0));
    let start = Instant::now();
    let lines = driver(
        &mesh.node(0).socket(),
        "tasks",
        &[("N", "60".into()), ("MS", "1000".into())],
    );
    let took = start.elapsed();
    assert_eq!(lines.len(), 60, "{lines:?}");
    let mut per_peer: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let peer = l.split_whitespace().nth(1).unwrap_or("").to_string();
        *per_peer.entry(peer).or_default() += 1;
    }
    let peers: BTreeSet<&str> = mesh.nodes().iter().map(|n| n.peer_id()).collect();
    let ran: BTreeSet<&str> = per_peer.keys().map(String::as_str).collect();
    assert_eq!(ran, peers, "tasks ran on {per_peer:?}");
    // 60 one-second tasks on one CPU take 60 s; three peers share them.
    assert!(
        took < Duration::from_secs(40),
        "took {took:?}; per peer {per_peer:?}"
    );
    eprintln!("60 tasks on 3 peers in {took:?}: {per_peer:?}");
}
