//! A program attached to a `shoal node` daemon (a real process on a real socket): its tasks
//! run in workers the daemon starts, and `shoal status --json` reports them.

use std::time::Duration;

use shoal::InitOptions;
use shoal_tests::{parent_of, NodeOptions, NodeProcess};

#[shoal::remote]
fn worker_pid() -> u32 {
    std::process::id()
}

#[shoal::remote]
fn double(x: Vec<u64>) -> Vec<u64> {
    x.into_iter().map(|v| v * 2).collect()
}

#[test]
fn a_driver_uses_a_daemon() {
    let daemon = NodeProcess::start(NodeOptions::new().cpus(2.0)).unwrap();
    let socket = daemon.socket();
    let socket_arg = socket.to_str().expect("a UTF-8 socket path");
    let shoal = shoal::init_with(InitOptions {
        socket: Some(socket.clone()),
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!shoal.is_embedded());

    let w = worker_pid
        .remote()
        .get_blocking_timeout(Duration::from_secs(30))
        .unwrap();
    assert_ne!(w, std::process::id());
    assert_eq!(
        parent_of(w),
        Some(daemon.pid()),
        "the daemon started the worker"
    );

    // A large argument and result through the daemon's shared-memory store.
    let big: Vec<u64> = (0..100_000).collect();
    let out = double
        .remote(shoal::put(&big).unwrap())
        .get_blocking()
        .unwrap();
    assert_eq!(out.len(), 100_000);
    assert_eq!(out[99_999], 199_998);

    let out = daemon
        .run_cli(["status", "--json", "--socket", socket_arg])
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"], shoal.node_id().to_hex());
    assert_eq!(v["pid"], daemon.pid());
    assert_eq!(v["resources"]["total"]["CPU"], 2.0);
    assert!(v["tasks"]["finished"].as_u64().unwrap() >= 2);
    let workers = v["workers"].as_array().unwrap();
    assert!(workers.iter().any(|x| x["pid"] == w), "{workers:?}");
    assert!(
        v["clients"].as_u64().unwrap() >= 2,
        "this driver and its worker"
    );
    assert!(v["objects"]["store_capacity"].as_u64().unwrap() > 0);

    // `shoal objects` lists what this driver holds, with size, owner, pins and location.
    let held = shoal::put(&vec![7u8; 1 << 20]).unwrap();
    shoal.status().unwrap();
    let out = daemon
        .run_cli(["objects", "--json", "--socket", socket_arg])
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == held.id().to_hex())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["location"], "memory");
    assert!(entry["size"].as_u64().unwrap() > 1 << 20);
    assert_eq!(entry["holders"], 1);
    assert_eq!(entry["pinned_by"], serde_json::json!(["ref"]));
    let text = daemon.run_cli(["objects", "--socket", socket_arg]).unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&held.id().to_hex()[..16]), "{text}");
    drop(daemon);
}
