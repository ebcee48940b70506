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
