//! The local machine with a real driver (this test binary) and a real `shoal node`: thousands
//! of idle connections do not lock a new driver, its workers or the CLI out, the node's own
//! workers are never counted against the per-uid bound, and a driver refuses a per-user
//! socket directory that another user could have planted a socket in.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shoal::InitOptions;
use shoal_protocol::ToNode;
use shoal_tests::{cli_hello, expect_rejected_and_closed, NodeOptions, NodeProcess, RawClient};

/// The number of idle connections the issue asks for.
const IDLE: usize = 5000;

#[shoal::remote]
fn worker_pid() -> u32 {
    std::process::id()
}

/// Set in the child that checks the driver's side (see `a_driver_refuses_a_planted_socket_directory`).
const PLANTED_CHILD: &str = "SHOAL_TEST_PLANTED_CHILD";

#[test]
fn idle_connections_do_not_stop_a_new_driver_from_running_a_task() {
    if std::env::var_os(PLANTED_CHILD).is_some() {
        return;
    }
    // Two attached clients per uid at most: the driver and one CLI, so the driver's workers
    // only get in because the node does not count them.
    let node = NodeProcess::start(
        NodeOptions::new()
            .cpus(2.0)
            .env("RUST_LOG", "info")
            .args(["--max-clients-per-uid", "2"]),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let socket = node.socket();
    let start = Instant::now();
    let idle: Vec<UnixStream> = (0..IDLE)
        .map(|i| {
            UnixStream::connect(&socket).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    eprintln!("{IDLE} idle connections open in {:?}", start.elapsed());

    let start = Instant::now();
    let shoal = shoal::init_with(InitOptions {
        socket: Some(socket.clone()),
        require_daemon: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("the new driver could not attach: {e}"));
    let pid = worker_pid
        .remote()
        .get_blocking_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the new driver's task: {e}"));
    eprintln!(
        "with {IDLE} idle connections, a new driver attached and ran a task in {:?}",
        start.elapsed()
    );
    assert_eq!(shoal_tests::parent_of(pid), Some(node.pid()));
    node.expect_log(&["too many connections waiting to say Hello"]);

    // The CLI gets in too (the second client of this uid), and a third is refused with the
    // reason, while the workers still count for nothing.
    let mut cli = node.client();
    let status = cli.status(1);
    assert!(status.workers.iter().any(|w| w.pid == pid), "{status:?}");
    let mut third = RawClient::connect(&socket);
    third.send(&ToNode::Hello(cli_hello()));
    let reason = expect_rejected_and_closed(&mut third, false);
    assert!(reason.contains("too many connections from uid"), "{reason}");
    // Many tasks in parallel: more workers start and attach.
    let refs: Vec<_> = (0..8).map(|_| worker_pid.remote()).collect();
    for r in refs {
        r.get_blocking_timeout(Duration::from_secs(60)).unwrap();
    }
    // The idle connections still held on our side changed nothing for the node's clients.
    assert_eq!(idle.len(), IDLE);
    assert!(cli.status(2).tasks_finished >= 9);
    drop(shoal);
}

#[test]
fn a_driver_refuses_a_planted_socket_directory() {
    if std::env::var_os(PLANTED_CHILD).is_some() {
        // The child: its per-user socket directory (under $XDG_RUNTIME_DIR) is writable by
        // everyone, as if another user had made it.
        let Err(err) = shoal::init() else {
            panic!("init must refuse the directory");
        };
        assert!(
            matches!(err, shoal::InitError::SocketDir(_)),
            "expected SocketDir, got {err}"
        );
        println!("child refused: {err}");
        return;
    }
    let dir = shoal_tests::TestDir::new("shoal-it-planted-driver");
    let planted = dir.join("shoal");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "a_driver_refuses_a_planted_socket_directory",
            "--nocapture",
        ])
        .env(PLANTED_CHILD, "1")
        .env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("SHOAL_SOCKET");
    let out = shoal_tests::run_with_timeout(&mut child, Duration::from_secs(60)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child refused"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("users other than its owner may write"),
        "{stdout}"
    );
    // Nothing was made in it: no embedded node's socket either.
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0);
}
