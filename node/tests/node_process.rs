//! The `shoal` binary as an operator uses it: `shoal status`, one node per socket, and the
//! store directory's life across SIGTERM and SIGKILL.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{NodeOptions, NodeProcess, TestDir, DEADLINE};

/// A node of this package's `shoal` on `dir`'s socket and store directory (which several
/// nodes may share, one after another), logging at `info` (the tests wait for its log lines),
/// with `extra` arguments.
fn options(dir: &TestDir, extra: &[&str]) -> NodeOptions {
    NodeOptions::new()
        .bin(env!("CARGO_BIN_EXE_shoal"))
        .cpus(2.0)
        .socket(socket(dir))
        .store_dir(store_parent(dir))
        .env("RUST_LOG", "info")
        .args(extra)
}

/// Starts a node on `dir` and waits until it answers and listens.
fn start_node(dir: &TestDir, extra: &[&str]) -> NodeProcess {
    NodeProcess::start(options(dir, extra)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts a node on `dir` without waiting for it.
fn spawn_node(dir: &TestDir, extra: &[&str]) -> NodeProcess {
    NodeProcess::spawn(options(dir, extra)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Where the nodes of `dir` put their socket.
fn socket(dir: &TestDir) -> PathBuf {
    dir.join("node.sock")
}

/// The `--store-dir` of the nodes of `dir`.
fn store_parent(dir: &TestDir) -> PathBuf {
    dir.join("store")
}

/// The `shoal-<pid>-<id>` directories under the store parent of `dir`.
fn store_dirs(dir: &TestDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store_parent(dir))
        .expect("read store parent")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Runs `shoal <args>` to its end.
fn run_cli(args: &[&str]) -> std::process::Output {
    shoal_tests::run_cli(env!("CARGO_BIN_EXE_shoal").as_ref(), args).expect("run shoal")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn status_text_and_json() {
    let dir = TestDir::new("shoal-it-status");
    let node = start_node(&dir, &["--resource", "gpu=1"]);
    let raw = node.raw_status();
    let node_id = raw.node_id.to_hex();
    let socket = socket(&dir);
    let socket_arg = socket.to_str().expect("utf-8 path");

    // Text.
    let out = run_cli(&["status", "--socket", socket_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shoal status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("node      {node_id}")), "{stdout}");
    assert!(
        stdout.contains(&format!("pid       {}", node.pid())),
        "{stdout}"
    );
    assert!(
        stdout.contains("resources CPU=2, gpu=1 free of CPU=2, gpu=1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tasks     0 queued, 0 running, 0 finished"),
        "{stdout}"
    );
    assert!(stdout.contains("workers   0"), "{stdout}");

    // JSON: exactly one object on one line.
    let out = run_cli(&["status", "--json", "--socket", socket_arg]);
    assert!(
        out.status.success(),
        "shoal status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let values: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("valid JSON");
    assert_eq!(values.len(), 1, "{stdout}");
    let v = &values[0];
    assert!(v.is_object(), "{v}");

    let id = v["node_id"].as_str().expect("node_id string");
    assert!(is_hex(id, 32), "node_id {id:?}");
    assert_eq!(id, node_id);
    assert_eq!(v["pid"].as_u64(), Some(u64::from(node.pid())));
    assert_eq!(v["socket"].as_str(), Some(socket_arg));
    assert_eq!(v["embedded"], Value::Bool(false));
    assert!(v["uptime_ms"].is_u64(), "{v}");
    let store_dir = store_parent(&dir).join(format!("shoal-{}-{node_id}", node.pid()));
    assert_eq!(v["store_dir"].as_str(), store_dir.to_str());

    for which in ["total", "free"] {
        let r = &v["resources"][which];
        assert_eq!(r["CPU"].as_f64(), Some(2.0), "resources.{which}: {r}");
        assert_eq!(r["gpu"].as_f64(), Some(1.0), "resources.{which}: {r}");
        assert_eq!(r.as_object().map(|o| o.len()), Some(2), "{r}");
    }
    assert_eq!(v["workers"].as_array().map(Vec::len), Some(0), "{v}");
    for k in ["queued", "running", "finished"] {
        assert_eq!(v["tasks"][k].as_u64(), Some(0), "tasks.{k}: {v}");
    }
    // The CLI's own connection at least.
    assert!(v["clients"].as_u64().is_some_and(|n| n >= 1), "{v}");
    let objects = &v["objects"];
    for k in [
        "count",
        "inline_count",
        "inline_bytes",
        "shared_count",
        "shared_bytes",
    ] {
        assert_eq!(objects[k].as_u64(), Some(0), "objects.{k}: {v}");
    }
    assert!(
        objects["store_capacity"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );

    // Without a node: a clear error, not a hang.
    let nobody = dir.path().join("nobody.sock");
    let out = run_cli(&["status", "--socket", nobody.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no node is listening"), "{stderr}");
}

#[test]
fn stale_socket_is_replaced_and_live_socket_is_not() {
    let dir = TestDir::new("shoal-it-stale-sock");
    let mut first = start_node(&dir, &[]);
    let first_status = first.raw_status();

    // A second node on the live socket must refuse to start, and must not disturb the first.
    let mut second = spawn_node(&dir, &[]);
    let exit = second
        .wait_timeout(DEADLINE)
        .unwrap()
        .expect("a second node on a live socket kept running");
    assert!(!exit.success(), "second node exited with {exit}");
    second.expect_log(&[
        "already listening on",
        socket(&dir).to_str().expect("utf-8"),
    ]);
    drop(second);
    assert!(socket(&dir).exists(), "the live socket was removed");
    let again = first.raw_status();
    assert_eq!(again.node_id, first_status.node_id);
    assert_eq!(again.pid, first.pid());
    assert_eq!(store_dirs(&dir).len(), 1, "{:?}", store_dirs(&dir));

    // SIGKILL leaves the socket file behind; a new node replaces it.
    first.kill_9().unwrap();
    assert!(socket(&dir).exists(), "expected a stale socket file");
    let third = start_node(&dir, &[]);
    let status = third.raw_status();
    assert_eq!(status.pid, third.pid());
    assert_ne!(status.node_id, first_status.node_id);
}

/// Starts a node, stops it with `signal`, and checks it cleaned up after itself.
fn stops_cleanly_on(signal: libc::c_int, test: &str, logged: &str) {
    let dir = TestDir::new(test);
    let mut node = start_node(&dir, &[]);
    let status = node.raw_status();
    let name = format!("shoal-{}-{}", node.pid(), status.node_id.to_hex());
    assert_eq!(store_dirs(&dir), vec![name.clone()]);
    assert_eq!(
        status.store_dir,
        store_parent(&dir).join(&name).display().to_string()
    );

    node.signal(signal).unwrap();
    let exit = node
        .wait_timeout(DEADLINE)
        .unwrap()
        .expect("node did not stop on the signal");
    assert!(exit.success(), "node exited with {exit}");
    assert_eq!(store_dirs(&dir), Vec::<String>::new());
    assert!(!socket(&dir).exists(), "socket file left behind");
    node.expect_log(&[logged]);
    node.expect_log(&["node stopped"]);
}

#[test]
fn store_directory_is_removed_on_sigterm() {
    stops_cleanly_on(libc::SIGTERM, "sigterm", "terminated");
}

#[test]
fn store_directory_is_removed_on_sigint() {
    stops_cleanly_on(libc::SIGINT, "sigint", "interrupted");
}

#[test]
fn stale_store_directory_of_a_killed_node_is_removed() {
    let dir = TestDir::new("shoal-it-stale-store");
    let mut dead = start_node(&dir, &[]);
    let dead_pid = dead.pid();
    let dead_name = format!("shoal-{dead_pid}-{}", dead.raw_status().node_id.to_hex());
    // SIGKILL, and reap it: an unreaped zombie still counts as a live pid.
    dead.kill_9().unwrap();
    assert_eq!(store_dirs(&dir), vec![dead_name.clone()]);

    let node = start_node(&dir, &[]);
    let name = format!(
        "shoal-{}-{}",
        node.pid(),
        node.raw_status().node_id.to_hex()
    );
    assert_eq!(store_dirs(&dir), vec![name]);
    node.expect_log(&[
        "removing store directory of a dead node",
        &dead_name,
        &format!("pid={dead_pid}"),
    ]);
}

#[test]
fn a_file_that_is_not_a_socket_is_never_deleted() {
    let dir = TestDir::new("shoal-it-not-a-sock");
    std::fs::write(socket(&dir), b"precious").expect("write file");
    let mut node = spawn_node(&dir, &[]);
    // Until the node either gives up or serves on that path.
    let deadline = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(exit) = node.try_wait().expect("try_wait") {
            break Some(exit);
        }
        if UnixStream::connect(socket(&dir)).is_ok() || Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        std::fs::read(socket(&dir)).ok().as_deref(),
        Some(&b"precious"[..]),
        "the node replaced a regular file at its socket path"
    );
    let exit = exit.expect("node started serving on the path of a regular file");
    assert!(!exit.success(), "node exited with {exit}");
}
