//! The mission's example, run as the program a user runs: `examples/parameter_server.rs`,
//! built by `cargo test --workspace` next to this test.

use std::path::PathBuf;
use std::process::Command;

/// The example binary beside this test's own (`target/<profile>/examples/`).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("parameter_server");
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(example())
        .args(args)
        // Its own embedded node, whatever daemon the environment points at.
        .env("SHOAL_SOCKET", "/nonexistent/shoal.sock")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn plain_and_sharded_reach_the_expected_values() {
    let (ok, out) = run(&[]);
    assert!(ok, "{out}");
    // Two workers, 100 iterations, a gradient of ones: every value is 200, in both forms.
    assert!(
        out.contains("== one parameter server: 1 server actor(s), 2 workers, 100 iterations"),
        "{out}"
    );
    assert!(
        out.contains("== sharded parameter server: 2 server actor(s)"),
        "{out}"
    );
    assert_eq!(
        out.matches("final params[..3] = [200.0, 200.0, 200.0] (expected 200 everywhere)")
            .count(),
        2,
        "{out}"
    );
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn flags_change_the_run_and_the_check() {
    let (ok, out) = run(&[
        "--dim",
        "7",
        "--workers",
        "3",
        "--iters",
        "20",
        "--shards",
        "3",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 server actor(s), 3 workers, 20 iterations"),
        "{out}"
    );
    assert_eq!(out.matches("(expected 60 everywhere)").count(), 2, "{out}");
    // Bad flags are refused with a non-zero exit.
    let (ok, out) = run(&["--shards", "0"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("--shards must be between 1 and --dim"),
        "{out}"
    );
}

/// The same program, unchanged, against a mesh of three one-CPU `shoal node` processes:
/// its workers spill to the other peers, and `--show-peers` says where each ran.
#[test]
fn runs_unchanged_across_a_mesh_of_three_nodes() {
    let mesh = shoal_tests::Mesh::start_with(
        3,
        &shoal_tests::NodeOptions::new()
            .mesh("parameter-server")
            .cpus(1.0),
        None,
    )
    .unwrap();
    mesh.wait_converged(std::time::Duration::from_secs(30))
        .unwrap();
    let out = Command::new(example())
        .args(["--workers", "3", "--iters", "30", "--show-peers"])
        .env("SHOAL_SOCKET", mesh.node(0).socket())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(out_count(&text, "(expected 90 everywhere)"), 2, "{text}");
    let peers: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("worker "))
        .filter_map(|l| l.split(" ran on peer ").nth(1))
        .collect();
    let ids: std::collections::BTreeSet<&str> = mesh.nodes().iter().map(|n| n.peer_id()).collect();
    assert!(peers.len() >= 2, "workers ran on {peers:?}: {text}");
    assert!(peers.is_subset(&ids), "{peers:?} vs {ids:?}");
    // The program exited: no peer keeps any of its objects (nor its tasks or actors).
    for node in mesh.nodes() {
        let (_, took) = shoal_tests::wait_for(
            std::time::Duration::from_secs(20),
            "a peer to free everything the program had",
            || {
                let s = node.try_status()?;
                let held = (
                    s["objects"]["count"].as_u64(),
                    s["tasks"]["queued"].as_u64(),
                    s["tasks"]["running"].as_u64(),
                    s["actors"].as_array().map(Vec::len),
                );
                Ok((held == (Some(0), Some(0), Some(0), Some(0))).then_some(()))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}: {}", node.status()));
        eprintln!("peer {} empty after {took:?}", node.peer_id());
    }
}

fn out_count(text: &str, what: &str) -> usize {
    text.matches(what).count()
}
