//! `shoal::shutdown` and the end of a program with an embedded node.
//!
//! Each check runs in a child program (this test binary run again with one entry selected by
//! an environment variable): it counts its own threads, sockets and mappings, which other
//! tests running in this process would disturb, and shutdown is for good in a process.
//!
//! - After `shoal::shutdown()` (and its async form) no SDK thread, worker, socket or store
//!   file is left, and every SDK call fails with a typed error.
//! - A driver attached to a daemon closes its connection at the shutdown: the daemon frees
//!   what the driver held while the driver still runs.
//! - A program with an embedded node that exits while its node is still starting workers
//!   exits cleanly: no worker says it cannot connect (the node stops, killing its workers,
//!   before its socket goes).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shoal::{GetError, InitError, InitOptions, PutError};
use shoal_tests::{pid_alive, KillOnDrop};

/// The variable that selects a child program, and the one that tells it what to do.
const ENV_CHILD: &str = "SHOAL_TEST_SHUTDOWN_CHILD";

/// How long a child program may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The line every worker that cannot reach its node prints.
const STRAY: &str = "cannot connect";

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[shoal::remote]
fn worker_pid() -> u32 {
    std::process::id()
}

#[shoal::remote]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// This test binary again, running only `entry` (a test that does nothing unless
/// [`ENV_CHILD`] says `what`), with its own embedded node unless `socket` names a daemon.
fn child(entry: &str, what: &str, socket: Option<&Path>) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            entry,
            "--nocapture",
            "--quiet",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, what)
        .env(
            "SHOAL_SOCKET",
            socket.unwrap_or(Path::new("/nonexistent/shoal.sock")),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs a child program to its end, killing it if it takes longer than [`CHILD_TIMEOUT`].
fn run(mut command: Command) -> Output {
    let out = shoal_tests::run_with_timeout(&mut command, CHILD_TIMEOUT).unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{command:?} failed: {text}");
    assert!(
        !out.stderr
            .windows(STRAY.len())
            .any(|w| w == STRAY.as_bytes()),
        "a stray message: {text}"
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The value of the line `key value` a child printed.
fn printed(out: &Output, key: &str) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{key}` line: {}", text(out)))
        .to_string()
}

/// What the child chose to do, if it is the child.
fn child_role(what: &str) -> bool {
    std::env::var(ENV_CHILD).is_ok_and(|v| v == what)
}

fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

/// Waits (polling, at most `timeout`) until `check` holds; panics with `what` otherwise. (A
/// joined thread leaves `/proc/self/task` a moment after the join returns, a killed process
/// ends a moment after the signal.)
fn eventually(timeout: Duration, what: &str, check: impl Fn() -> bool) {
    shoal_tests::wait_for(timeout, what, || Ok(check().then_some(()))).unwrap();
}

/// Whether `needle` appears in the file at `path` (`/proc/net/unix`, `/proc/self/maps`).
fn mentions(path: &str, needle: &Path) -> bool {
    std::fs::read_to_string(path)
        .unwrap()
        .contains(&*needle.to_string_lossy())
}

/// Everything an embedded node leaves while it runs, and its checks once it has stopped.
struct Traces {
    socket: PathBuf,
    store: PathBuf,
    workers: Vec<u32>,
    threads: usize,
}

impl Traces {
    fn of(shoal: &shoal::Shoal, workers: Vec<u32>, threads_before: usize) -> Self {
        let store = PathBuf::from(shoal.status().unwrap().store_dir);
        let socket = shoal.socket().to_path_buf();
        assert!(socket.exists() && store.is_dir());
        assert!(mentions("/proc/net/unix", &socket));
        assert!(threads().iter().any(|t| t == "shoal-runtime"));
        Traces {
            socket,
            store,
            workers,
            threads: threads_before,
        }
    }

    fn assert_gone(&self) {
        eventually(
            Duration::from_secs(5),
            &format!("threads left: {:?}", threads()),
            || {
                let now = threads();
                now.len() == self.threads && !now.iter().any(|t| t == "shoal-runtime")
            },
        );
        assert!(!self.socket.exists(), "{} left", self.socket.display());
        assert!(!self.store.exists(), "{} left", self.store.display());
        assert!(
            !mentions("/proc/net/unix", &self.socket),
            "the node still listens on {}",
            self.socket.display()
        );
        assert!(
            !mentions("/proc/self/maps", &self.store),
            "a store file is still mapped"
        );
        // Killed with SIGKILL; it ends a moment later.
        for pid in &self.workers {
            eventually(
                Duration::from_secs(5),
                &format!("worker {pid} still runs"),
                || !pid_alive(*pid),
            );
        }
    }
}

/// After a shutdown every call fails with a typed error, at once.
fn assert_calls_fail(shoal: &shoal::Shoal, pending: &shoal::ObjectRef<u64>) {
    let start = Instant::now();
    assert_eq!(pending.get_blocking(), Err(GetError::Shutdown));
    assert_eq!(square.remote(3).get_blocking(), Err(GetError::Shutdown));
    assert_eq!(
        square
            .remote(3)
            .get_blocking_timeout(Duration::from_secs(30)),
        Err(GetError::Shutdown)
    );
    assert!(matches!(shoal::put(&7u64), Err(PutError::Shutdown)));
    assert!(matches!(
        shoal::put(&vec![1u8; 1 << 20]),
        Err(PutError::Shutdown)
    ));
    assert!(matches!(shoal::init(), Err(InitError::Shutdown)));
    assert_eq!(shoal.status().map(|_| ()), Err(GetError::Shutdown));
    let (ready, rest) = shoal::wait_blocking(std::slice::from_ref(pending), 1, None).unwrap();
    assert_eq!((ready.len(), rest.len()), (1, 0));
    shoal::shutdown(); // idempotent
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn shutdown_leaves_no_thread_worker_socket_or_store() {
    let out = run(child("shutdown_entry", "blocking", None));
    assert_eq!(printed(&out, "result"), "ok");
}

#[test]
fn async_shutdown_leaves_no_thread_worker_socket_or_store() {
    let out = run(child("shutdown_entry", "async", None));
    assert_eq!(printed(&out, "result"), "ok");
}

/// The child of the two tests above (a no-op otherwise).
#[test]
fn shutdown_entry() {
    let blocking = child_role("blocking");
    if !blocking && !child_role("async") {
        return;
    }
    let before = threads().len();
    let shoal = shoal::init_with(InitOptions {
        force_embedded: true,
        cpus: Some(2.0),
        ..Default::default()
    })
    .unwrap();
    assert!(shoal.is_embedded());
    let pid = worker_pid.remote().get_blocking().unwrap();
    assert_eq!(square.remote(7).get_blocking(), Ok(49));
    let big = shoal::put(&vec![7u8; 1 << 20]).unwrap();
    assert_eq!(big.get_blocking().unwrap().len(), 1 << 20);
    let small = shoal::put(&5u64).unwrap();
    assert_eq!(small.get_blocking(), Ok(5));
    // Still running when the shutdown comes.
    let pending = sleepy.remote(60_000);
    let traces = Traces::of(&shoal, vec![pid], before);
    if blocking {
        shoal::shutdown();
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(shoal.shutdown());
    }
    traces.assert_gone();
    assert_calls_fail(&shoal, &pending);
    // Values read before fail too: the store they are in is gone.
    assert_eq!(big.get_blocking().map(|v| v.len()), Err(GetError::Shutdown));
    assert_eq!(small.get_blocking(), Err(GetError::Shutdown));
    drop((big, small, pending));
    println!("result ok");
}

#[test]
fn shutdown_closes_the_connection_to_a_daemon() {
    let node = shoal_tests::NodeProcess::start(shoal_tests::NodeOptions::new().cpus(2.0)).unwrap();
    let socket = node.socket();
    let status = || shoal_tests::status_json(&socket);
    // The `shoal status` asking is a client too.
    let alone = status().unwrap()["clients"].as_u64().unwrap();
    let mut command = child("daemon_driver_entry", "daemon", Some(&socket));
    command.stdin(Stdio::piped()).stderr(Stdio::inherit());
    let mut driver = KillOnDrop::new(command.spawn().unwrap());
    let mut lines = BufReader::new(driver.child_mut().stdout.take().unwrap()).lines();
    // Reads the driver's output up to `line` (libtest prints its own lines too).
    let mut expect = |line: &str| {
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.trim() == line);
        assert!(found, "the driver ended before it printed {line:?}");
    };
    let mut stdin = driver.child_mut().stdin.take().unwrap();
    expect("attached");
    let held = status().unwrap();
    assert!(held["objects"]["count"].as_u64().unwrap() >= 1, "{held}");
    assert!(held["clients"].as_u64().unwrap() > alone, "{held}");
    writeln!(stdin, "shut down").unwrap();
    expect("shut down");
    // The driver still runs: it is the shutdown that closed its connection.
    shoal_tests::wait_for(
        Duration::from_secs(20),
        "the driver's objects freed",
        || {
            let s = status()?;
            let done =
                s["objects"]["count"].as_u64() == Some(0) && s["clients"].as_u64() == Some(alone);
            Ok(done.then_some(()))
        },
    )
    .unwrap();
    assert_eq!(driver.try_wait().unwrap(), None, "the driver has exited");
    writeln!(stdin, "exit").unwrap();
    let (status, _) =
        shoal_tests::wait_for(CHILD_TIMEOUT, "the driver's exit", || driver.try_wait()).unwrap();
    assert!(status.success());
}

/// The driver of `shutdown_closes_the_connection_to_a_daemon` (a no-op otherwise).
#[test]
fn daemon_driver_entry() {
    if !child_role("daemon") {
        return;
    }
    let before = threads().len();
    let shoal = shoal::init_with(InitOptions {
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!shoal.is_embedded());
    let held = shoal::put(&vec![1u8; 1 << 20]).unwrap();
    assert_eq!(square.remote(5).get_blocking(), Ok(25));
    println!("attached");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    shoal::shutdown();
    eventually(
        Duration::from_secs(5),
        &format!("threads left: {:?}", threads()),
        || threads().len() == before,
    );
    assert_eq!(square.remote(3).get_blocking(), Err(GetError::Shutdown));
    println!("shut down");
    std::io::stdin().read_line(&mut line).unwrap();
    drop(held);
}

/// Programs whose node is still starting workers when `main` returns: run several times,
/// none may print a worker's complaint, and none may leave the node's socket or store.
#[test]
fn exiting_while_workers_start_leaves_no_stray_message_or_file() {
    for run_no in 0..8 {
        let out = run(child("exit_entry", "exit", None));
        let socket = PathBuf::from(printed(&out, "socket"));
        let store = PathBuf::from(printed(&out, "store"));
        assert!(!socket.exists(), "run {run_no}: {} left", socket.display());
        assert!(!store.exists(), "run {run_no}: {} left", store.display());
    }
}

/// The program of the test above (a no-op otherwise): starts many workers at once, and
/// returns as soon as the first task is done.
#[test]
fn exit_entry() {
    if !child_role("exit") {
        return;
    }
    let shoal = shoal::init_with(InitOptions {
        force_embedded: true,
        cpus: Some(16.0),
        ..Default::default()
    })
    .unwrap();
    println!("socket {}", shoal.socket().display());
    println!("store {}", shoal.status().unwrap().store_dir);
    let refs: Vec<_> = (0..16u64).map(|i| square.remote(i)).collect();
    assert_eq!(refs[0].get_blocking(), Ok(0));
}
