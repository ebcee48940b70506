//! A `shoal node` stopped with SIGTERM while a task runs: the waiting driver gets a typed
//! error at once (not a hang), and afterwards no process, socket or store file of the node
//! remains.

use std::time::{Duration, Instant};

use shoal::InitOptions;
use shoal_tests::{pid_alive, wait_for, NodeOptions, NodeProcess};

#[shoal::remote]
fn sleepy(secs: u64) -> u32 {
    std::thread::sleep(Duration::from_secs(secs));
    std::process::id()
}

#[test]
fn sigterm_stops_the_node_and_leaves_nothing_behind() {
    let mut node = NodeProcess::start(NodeOptions::new().cpus(2.0)).unwrap();
    let socket = node.socket();
    let status = node.status();
    let store_dir = status["store_dir"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&store_dir).exists());
    let shoal = shoal::init_with(InitOptions {
        socket: Some(socket.clone()),
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!shoal.is_embedded());

    // A task that would run for a minute: its worker is up once the node lists it busy.
    let pending = sleepy.remote(60);
    let worker = wait_for(Duration::from_secs(30), "a busy worker", || {
        let s = node.try_status()?;
        Ok(s["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["state"] == "busy"))
            .and_then(|w| w["pid"].as_u64()))
    })
    .unwrap()
    .0 as u32;
    assert!(pid_alive(worker));

    // SAFETY: a signal to our own child, whose pid the guard holds.
    assert_eq!(unsafe { libc::kill(node.pid() as i32, libc::SIGTERM) }, 0);
    let asked = Instant::now();
    // The driver's wait ends with an error, long before the task would have.
    let got = pending.get_blocking_timeout(Duration::from_secs(20));
    assert!(
        matches!(
            got,
            Err(shoal::GetError::Task(shoal::TaskError::NodeStopping))
        ),
        "{got:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );

    wait_for(Duration::from_secs(15), "the node to exit", || {
        Ok((!node.is_running()).then_some(()))
    })
    .unwrap();
    assert!(!pid_alive(worker), "the worker {worker} outlived its node");
    assert!(!socket.exists(), "{} remains", socket.display());
    assert!(
        !std::path::Path::new(&store_dir).exists(),
        "{store_dir} remains"
    );
    let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
    assert!(log.contains("node stopped"), "{log}");
}
