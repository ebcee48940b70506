//! A driver that dies (issue 12, item 3): its tasks running on the daemon stop at once, so
//! the next program's work runs (before, a SIGKILLed driver's tasks kept the daemon's CPUs
//! until they ended, and the next driver waited for them).

use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_tests::{
    example_bin, pid_alive, run_with_timeout, wait_for, KillOnDrop, NodeOptions, NodeProcess,
};

/// `examples/pull_soak` attached to `node`: `n` tasks, `n` at a time, each working `ms`.
fn soak(node: &NodeProcess, n: u32, ms: u64) -> Command {
    let mut c = Command::new(example_bin("pull_soak").unwrap());
    c.args([n.to_string(), n.to_string(), "put".into(), ms.to_string()])
        .env("SHOAL_SOCKET", node.socket())
        .env("RUST_LOG", "warn");
    c
}

/// The pids of the node's workers that run a task.
fn busy_workers(node: &NodeProcess) -> Vec<u64> {
    node.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "busy")
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

#[test]
fn a_killed_drivers_running_tasks_stop_and_free_their_cpus() {
    let node = NodeProcess::start(NodeOptions::new().cpus(2.0)).unwrap();
    // Driver A: two tasks that would each run for ten minutes, on both CPUs.
    let mut a = KillOnDrop::spawn(
        "driver A",
        soak(&node, 2, 600_000)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let (busy, _) = wait_for(Duration::from_secs(60), "A's tasks to run", || {
        let running = node.status()["tasks"]["running"].as_u64().unwrap_or(0);
        let busy = busy_workers(&node);
        Ok((running == 2 && busy.len() == 2).then_some(busy))
    })
    .unwrap();
    a.kill().unwrap();

    // Their workers are killed, and driver B's tasks run on the freed CPUs.
    wait_for(Duration::from_secs(20), "A's workers to be killed", || {
        Ok(busy
            .iter()
            .all(|pid| !pid_alive(u32::try_from(*pid).unwrap()))
            .then_some(()))
    })
    .unwrap();
    let out = run_with_timeout(&mut soak(&node, 4, 10), Duration::from_secs(60)).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("4 ok, 0 failed"), "{text}");
    node.expect_log(&["its submitter is gone: stopping the task"]);
}

/// Entries of `dir` whose names start with `prefix`.
fn entries_with(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| shoal_tests::parent_of(*c) == Some(pid))
        .collect()
}

#[test]
fn a_driver_killed_with_its_embedded_node_leaves_nothing_once_the_next_node_starts() {
    let runtime = shoal_tests::TestDir::new("shoal-embedded-kill");
    let sockets = runtime.join("shoal");
    let embedded = |name: &str| {
        let mut c = Command::new(example_bin(name).unwrap());
        c.env_remove("SHOAL_SOCKET")
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    // A driver with a node of its own: tasks that keep its workers busy for minutes.
    let mut cmd = embedded("pull_soak");
    cmd.args(["4", "4", "put", "600000"]);
    let mut driver = KillOnDrop::spawn("embedded driver", &mut cmd).unwrap();
    let pid = driver.pid();
    let ((socket, store, workers), _) = wait_for(
        Duration::from_secs(60),
        "the driver's node and workers",
        || {
            let socket = entries_with(&sockets, &format!("embedded-{pid}-"));
            let store = entries_with(std::path::Path::new("/dev/shm"), &format!("shoal-{pid}-"));
            let workers = children_of(pid);
            Ok(
                (!socket.is_empty() && !store.is_empty() && !workers.is_empty())
                    .then_some((socket, store, workers)),
            )
        },
    )
    .unwrap();
    driver.kill().unwrap();

    // Its workers see their node gone and exit.
    wait_for(
        Duration::from_secs(20),
        "the driver's workers to exit",
        || Ok(workers.iter().all(|w| !pid_alive(*w)).then_some(())),
    )
    .unwrap();
    // What it left (its socket, its store in /dev/shm) goes when the next node starts.
    assert!(socket.iter().chain(&store).all(|p| p.exists()));
    let out = run_with_timeout(&mut embedded("hello"), Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{out:?}");
    for path in socket.iter().chain(&store) {
        assert!(!path.exists(), "{} is left", path.display());
    }
}
