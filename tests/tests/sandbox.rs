//! Code shipped by a peer runs sandboxed: a mesh of two real `shoal node` processes on
//! loopback, a driver attached to node A, its tasks pinned to node B (a resource only B has),
//! so B fetches the driver's binary from A and starts its workers from it. The tasks report
//! who they run as, from inside the worker; one allocates past B's `--worker-memory` and must
//! fail with `OutOfMemory` while the node keeps serving.
//!
//! The user switch needs root (as CI runs): as another user these tests say so and return.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal::{Bytes, TaskOptions};
use shoal_tests::{wait_for, Mesh, NodeOptions, NodeProcess};

const ENV_SCENARIO: &str = "SHOAL_TEST_SANDBOX_SCENARIO";
/// B's memory limit per worker.
const WORKER_MEMORY: u64 = 64 << 20;

/// Who the worker runs as: uid, gid, `no_new_privs`, its working directory, its peer.
#[shoal::remote]
fn whoami() -> (u32, u32, i32, String, String) {
    // SAFETY: getuid, getgid and prctl(PR_GET_NO_NEW_PRIVS) only read this process's state.
    let (uid, gid, nnp) = unsafe {
        (
            libc::getuid(),
            libc::getgid(),
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        )
    };
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    (uid, gid, nnp, cwd, shoal::peer_id().unwrap_or_default())
}

/// Fills `mb` MiB, touching every page, and returns how much it held.
#[shoal::remote]
fn hog(mb: u64) -> u64 {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mb {
        chunks.push(vec![i as u8 | 1; 1 << 20]);
    }
    chunks.iter().map(|c| c.len() as u64).sum()
}

/// Holds `mb` MiB (touched) for `ms` milliseconds.
#[shoal::remote]
fn hold(mb: u64, ms: u64) -> u64 {
    let held = vec![1u8; (mb << 20) as usize];
    std::thread::sleep(Duration::from_millis(ms));
    held.iter().map(|b| *b as u64).sum()
}

/// `n` bytes of a pattern: a large result, written into B's store by the sandboxed worker.
#[shoal::remote]
fn pattern(n: u64) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn on_b() -> TaskOptions {
    TaskOptions::new().num_cpus(1.0).resource("b", 1.0)
}

/// The driver programs of the tests below (a no-op when run as a test of its own).
#[test]
fn driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    shoal::init().unwrap();
    match scenario.as_str() {
        "whoami" => {
            let (uid, gid, nnp, cwd, peer) =
                whoami.options(on_b()).remote().get_blocking().unwrap();
            println!("result uid {uid}");
            println!("result gid {gid}");
            println!("result no_new_privs {nnp}");
            println!("result cwd {cwd}");
            println!("result peer {peer}");
            let n = 3 << 20;
            let bytes = pattern.options(on_b()).remote(n).get_blocking().unwrap();
            assert_eq!(bytes.len() as u64, n);
            assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
            println!("result large ok");
        }
        "oom" => {
            let hogged = hog
                .options(on_b().max_retries(1))
                .remote(4 * (WORKER_MEMORY >> 20));
            match hogged.get_blocking() {
                Err(shoal::GetError::Task(shoal::TaskError::OutOfMemory { limit, used })) => {
                    println!("result oom {limit} {used}");
                }
                other => panic!("expected OutOfMemory, got {other:?}"),
            }
            // The node keeps serving: the next task on B runs.
            let (uid, _, _, _, peer) = whoami.options(on_b()).remote().get_blocking().unwrap();
            println!("result next {uid} {peer}");
            let small = hog.options(on_b()).remote(8).get_blocking().unwrap();
            println!("result small {small}");
        }
        "monitor" => {
            // B's monitor finds the machine "nearly full" at once: the worker goes.
            let slow = hold.options(on_b().max_retries(0)).remote(32, 30_000);
            match slow.get_blocking() {
                Err(shoal::GetError::Task(shoal::TaskError::OutOfMemory { limit, used })) => {
                    println!("result oom {limit} {used}");
                }
                other => panic!("expected OutOfMemory, got {other:?}"),
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs this test binary as a driver attached to `socket`, running `scenario`; returns the
/// lines it printed that start with `result `.
fn driver(socket: &Path, scenario: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, scenario)
        .env("SHOAL_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "driver {scenario} failed: {stdout}");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("result "))
        .map(str::to_string)
        .collect()
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// The uid and gid of `name`.
fn user(name: &str) -> (u32, u32) {
    let c = CString::new(name).unwrap();
    // SAFETY: getpwnam returns null or a pointer to a static record, read at once.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        assert!(!pw.is_null(), "no user {name}");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A at `options[0]`, B with `--resource b=1 --worker-memory 64M` and `b_args`; returns when
/// both see each other.
fn mesh(name: &str, b_args: &[&str]) -> Mesh {
    let a = NodeProcess::start(NodeOptions::new().cpus(1.0).mesh(name)).unwrap();
    let addr = a.listen_addr().to_string();
    let b = NodeProcess::start(
        NodeOptions::new()
            .cpus(1.0)
            .mesh(name)
            .peer(addr)
            .env("RUST_LOG", "info")
            .args(["--resource", "b=1"])
            .args(["--worker-memory", &WORKER_MEMORY.to_string()])
            .args(b_args),
    )
    .unwrap();
    let mesh = Mesh::from_nodes(vec![a, b]);
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    mesh
}

/// The tests take turns: two cores shared by two meshes would blur the memory numbers.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's v1 memory cgroup directory, if there is a v1 memory hierarchy (the nodes
/// are children of this process: theirs is the same).
fn own_memory_cgroup() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
        c.split(',').any(|c| c == "memory").then_some(path)
    })?;
    let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Entries of `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_shipped_binarys_worker_runs_as_the_worker_user() {
    if !is_root() {
        eprintln!("skipped: switching to the worker user needs root");
        return;
    }
    let _turn = serial();
    let mut mesh = mesh("sandbox-user", &[]);
    let b_peer = mesh.node(1).peer_id().to_string();
    let lines = driver(&mesh.node(0).socket(), "whoami");
    let (uid, gid) = user("nobody");
    assert_eq!(value(&lines, "peer"), b_peer, "{lines:?}");
    assert_eq!(value(&lines, "uid"), uid.to_string(), "{lines:?}");
    assert_eq!(value(&lines, "gid"), gid.to_string(), "{lines:?}");
    assert_eq!(value(&lines, "no_new_privs"), "1", "{lines:?}");
    assert!(lines.contains(&"large ok".to_string()), "{lines:?}");
    // Its own working directory, owned by the worker user, closed to others.
    let cwd = PathBuf::from(value(&lines, "cwd"));
    let b_pid = mesh.node(1).pid();
    assert!(
        cwd.parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("shoal-{b_pid}-"))),
        "{}",
        cwd.display()
    );
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(&cwd).unwrap();
        assert_eq!(meta.uid(), uid);
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }
    // One cgroup per worker under B's own parent, all gone when B stops.
    let cgroups = own_memory_cgroup().inspect(|dir| {
        let parents = named(dir, &format!("shoal-{b_pid}-"));
        assert_eq!(parents.len(), 1, "{parents:?}");
        let workers = named(&parents[0], "w-");
        assert!(
            !workers.is_empty(),
            "no worker cgroup in {}",
            parents[0].display()
        );
        let limit = std::fs::read_to_string(workers[0].join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), WORKER_MEMORY.to_string());
    });
    mesh.node_mut(1).signal(libc::SIGTERM).unwrap();
    let status = mesh
        .node_mut(1)
        .wait_timeout(Duration::from_secs(20))
        .unwrap();
    assert!(status.is_some(), "node B did not stop");
    assert!(!cwd.exists(), "{} left behind", cwd.display());
    let workdirs = cwd.parent().unwrap();
    assert!(!workdirs.exists(), "{} left behind", workdirs.display());
    if let Some(dir) = cgroups {
        assert_eq!(
            named(&dir, &format!("shoal-{b_pid}-")),
            Vec::<PathBuf>::new()
        );
    }
}

#[test]
fn a_task_past_its_memory_limit_fails_with_out_of_memory_and_the_next_runs() {
    past_the_limit("sandbox-oom", &[]);
}

#[test]
fn under_rlimit_data_alone_a_task_past_its_limit_fails_with_out_of_memory_too() {
    past_the_limit("sandbox-oom-rlimit", &["--no-worker-cgroups"]);
}

/// A task that allocates 4 times B's `--worker-memory` fails with `OutOfMemory` after its one
/// retry, and the next tasks on B run.
fn past_the_limit(name: &str, b_args: &[&str]) {
    if !is_root() {
        eprintln!("skipped: switching to the worker user needs root");
        return;
    }
    let _turn = serial();
    let mesh = mesh(name, b_args);
    let lines = driver(&mesh.node(0).socket(), "oom");
    let oom: Vec<u64> = value(&lines, "oom")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let (limit, used) = (oom[0], oom[1]);
    // The limit, and the peak (at the limit, give or take a page; under RLIMIT_DATA the
    // node knows no better than the limit).
    assert_eq!(limit, WORKER_MEMORY, "{lines:?}");
    assert!(used >= WORKER_MEMORY - (1 << 20), "{lines:?}");
    let (uid, _) = user("nobody");
    let b_peer = mesh.node(1).peer_id();
    assert_eq!(
        value(&lines, "next"),
        format!("{uid} {b_peer}"),
        "{lines:?}"
    );
    assert_eq!(
        value(&lines, "small"),
        (8u64 << 20).to_string(),
        "{lines:?}"
    );
    // It was retried (its budget was one retry) before failing.
    let b = &mesh.node(1);
    wait_for(Duration::from_secs(10), "two OOM kills in B's log", || {
        let log = std::fs::read_to_string(b.log_path())?;
        Ok((log.matches("worker killed for memory").count() >= 2).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{}", b.with_log(format!("{e:#}"))));
}

#[test]
fn the_memory_monitor_kills_the_largest_worker_when_memory_is_nearly_full() {
    if !is_root() {
        eprintln!("skipped: switching to the worker user needs root");
        return;
    }
    let _turn = serial();
    // 1% of memory in use counts as "nearly full" on B: any worker of B is over it.
    let mesh = mesh("sandbox-monitor", &["--memory-threshold", "0.01"]);
    let lines = driver(&mesh.node(0).socket(), "monitor");
    let oom: Vec<u64> = value(&lines, "oom")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let total: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024;
    // The limit is the threshold in bytes; what it used is its resident set (up to the 32
    // MiB it holds, and more: the kill may come at any point of the task).
    assert_eq!(oom[0], (total as f64 * 0.01) as u64, "{lines:?}");
    assert!(oom[1] > 0 && oom[1] < total, "{lines:?}");
    // The node kept serving.
    let status = mesh.node(1).status();
    assert!(status["node_id"].is_string(), "{status}");
    mesh.node(1)
        .wait_for_log(&["memory is nearly full"], Duration::from_secs(5))
        .unwrap();
}

#[test]
fn a_root_node_refuses_to_run_shipped_code_as_root_unless_allowed() {
    if !is_root() {
        eprintln!("skipped: only a node running as root can refuse this");
        return;
    }
    let mut refused = NodeProcess::spawn(
        NodeOptions::new()
            .mesh("sandbox-root")
            .args(["--worker-user", "root"]),
    )
    .unwrap();
    let status = refused
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("the node refuses to start");
    assert!(!status.success());
    refused
        .wait_for_log(&["--allow-root-workers"], Duration::from_secs(5))
        .unwrap();
    // Allowed, it starts (and would run shipped code as root).
    let allowed = NodeProcess::start(NodeOptions::new().mesh("sandbox-root-allowed").args([
        "--worker-user",
        "root",
        "--allow-root-workers",
    ]))
    .unwrap();
    assert!(allowed.status()["node_id"].is_string());
}
