//! Worker processes dying under tasks: SIGKILL mid-task, with and without retries.
//!
//! The tests share one node and kill its workers, so they take turns (`serial`): a worker one
//! test kills must not be running another test's task.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal::{GetError, TaskError, TaskOptions};

/// Writes this worker's pid to `marker`, then sleeps until killed (or 60 s). On a retry the
/// marker already exists, so the retry returns at once.
#[shoal::remote]
fn victim(marker: String) -> u32 {
    let path = PathBuf::from(&marker);
    if path.exists() {
        return std::process::id();
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, std::process::id().to_string()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

#[shoal::remote]
fn worker_pid() -> u32 {
    std::process::id()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn marker(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("shoal-test-{}-{name}.pid", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Waits for the task to write its pid, then SIGKILLs it.
fn kill_when_started(marker: &PathBuf) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid: u32 = loop {
        if let Ok(s) = std::fs::read_to_string(marker) {
            break s.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_ne!(pid, std::process::id());
    // SAFETY: sending a signal to a worker process this test's node started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    pid
}

#[test]
fn sigkill_without_retries_is_a_worker_died_error() {
    let _turn = serial();
    shoal::init().unwrap();
    let m = marker("noretry");
    let r = victim
        .options(TaskOptions::new().max_retries(0))
        .remote(m.display().to_string());
    let killed = kill_when_started(&m);
    match r.get_blocking_timeout(Duration::from_secs(30)) {
        Err(GetError::Task(TaskError::WorkerDied { pid, exit })) => {
            assert_eq!(pid, killed);
            assert_eq!(exit.signal, Some(libc::SIGKILL));
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // The node replaced the worker: tasks keep running, in a live process.
    let p = worker_pid
        .remote()
        .get_blocking_timeout(Duration::from_secs(30))
        .unwrap();
    assert_ne!(p, killed);
    let _ = std::fs::remove_file(&m);
}

#[test]
fn sigkill_with_retries_left_succeeds_on_retry() {
    let _turn = serial();
    shoal::init().unwrap();
    let m = marker("retry");
    let r = victim
        .options(TaskOptions::new().max_retries(1))
        .remote(m.display().to_string());
    let killed = kill_when_started(&m);
    let p = r.get_blocking_timeout(Duration::from_secs(30)).unwrap();
    assert_ne!(p, killed, "the retry ran in a new worker");
    assert_ne!(p, 0);
    let _ = std::fs::remove_file(&m);
}

#[test]
fn killed_idle_workers_are_replaced() {
    let _turn = serial();
    let shoal = shoal::init().unwrap();
    let first = worker_pid.remote().get_blocking().unwrap();
    // SAFETY: a worker of our own node.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = shoal.status().unwrap();
        let live = s.workers.iter().filter(|w| w.pid == first).count();
        if live == 0 && s.workers.iter().any(|w| w.state == "idle" && w.pid != 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead worker not replaced: {:?}",
            s.workers
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_ne!(worker_pid.remote().get_blocking().unwrap(), first);
}
