//! `shoal top` driven in a real terminal (a tmux session of its own, on a tmux server of its
//! own) against a mesh of three node processes: its screen shows every peer with its CPUs,
//! its custom resources and a task running on it; `s` sorts; `enter` shows a peer's tasks;
//! `q` quits.
//!
//! Skipped (with a note) when tmux is not installed, unless `$SHOAL_TMUX_REQUIRED` is set
//! (see [`shoal_tests::tmux`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal::TaskOptions;
use shoal_tests::process::KillOnDrop;
use shoal_tests::tmux::Tmux;
use shoal_tests::{Mesh, NodeOptions};

const ENV_SCENARIO: &str = "SHOAL_TEST_TOP_SCENARIO";

#[shoal::remote]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(60));
    x * x
}

/// The driver: one long task on the peer with resource `b`, until it is killed.
#[test]
fn driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    assert_eq!(scenario, "slow");
    shoal::init().unwrap();
    let r = slow_square
        .options(TaskOptions::new().num_cpus(1.0).resource("b", 1.0))
        .remote(3);
    println!("submitted");
    r.get_blocking().unwrap();
}

#[test]
fn top_shows_every_peer_sorts_and_drills_into_one() {
    if !Tmux::available("the `shoal top` test") {
        return;
    }
    let name = format!("top-{}", std::process::id());
    let resourced = |r: &str| NodeOptions::new().cpus(2.0).arg("--resource").arg(r);
    let mesh = Mesh::start_each(
        [
            NodeOptions::new().cpus(0.0),
            resourced("b=1"),
            resourced("gpu=2"),
        ]
        .map(|o| o.mesh(&name))
        .to_vec(),
    )
    .unwrap();
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    let ids: Vec<String> = mesh
        .nodes()
        .iter()
        .map(|n| n.peer_id().to_string())
        .collect();

    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "slow")
        .env("SHOAL_SOCKET", mesh.node(0).socket())
        .stdout(std::process::Stdio::null());
    let _driver = KillOnDrop::spawn("slow driver", &mut command).unwrap();

    let bin: PathBuf = mesh.node(1).bin().to_path_buf();
    let top = format!(
        "{} top --socket {}",
        bin.display(),
        mesh.node(1).socket().display()
    );
    let tmux = Tmux::start("top", 200, 40, &top);
    // Every peer, with its CPUs and custom resources; the task running on b.
    let short: Vec<String> = ids.iter().map(|i| i.chars().take(12).collect()).collect();
    let mut needles: Vec<&str> = short.iter().map(String::as_str).collect();
    needles.extend(["3 peers", "TASKS/S", "gpu=2/2", "b=0/1", "[s] sort: peer"]);
    let screen = tmux.wait_for(&needles);
    // (The table's rows are inside its border; the first line names the peer asked.)
    let b_line = screen
        .lines()
        .find(|l| l.contains(&format!("│{}", short[1])))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(
        b_line.contains("1/2"),
        "b has one CPU of two free: {screen}"
    );
    let self_line = screen
        .lines()
        .find(|l| l.contains(&format!("│{}", short[1])) && l.contains("self"));
    assert!(self_line.is_some(), "top runs against b: {screen}");

    // Sorted by free CPU: the peer with none first.
    tmux.keys(&["s"]);
    let screen = tmux.wait_for(&["[s] sort: free cpu"]);
    let order: Vec<usize> = screen
        .lines()
        .filter_map(|l| short.iter().position(|s| l.contains(&format!("│{s}"))))
        .collect();
    assert_eq!(order.len(), 3, "{screen}");
    assert_eq!(order[0], 2, "c has the most CPU free: {screen}");
    assert_eq!(order[2], 0, "the first peer has none: {screen}");

    // Select b (second row now) and drill into it: its running task.
    tmux.keys(&["Down", "Enter"]);
    tmux.wait_for(&["tasks of", "slow_square", "RUNNING", "[esc] back"]);
    tmux.keys(&["Escape"]);
    tmux.wait_for(&["[s] sort: free cpu"]);
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.running() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
}
