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

/// Panics until it has run `fail_times` times (counted in the file `counter`), then returns
/// how many runs it took.
#[shoal::remote]
fn flaky(counter: String, fail_times: u32) -> u32 {
    let path = PathBuf::from(&counter);
    let runs = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&path, runs.to_string()).unwrap();
    if runs <= fail_times {
        panic!("flaky run {runs}");
    }
    runs
}

/// Ray's `retry_exceptions`: a task whose function panics runs again within its retries
/// when asked to, and not otherwise; past its retries the last panic is the error.
#[test]
fn retry_exceptions_runs_a_panicking_task_again_within_its_retries() {
    let _turn = serial();
    let counter = |name: &str| marker(name).display().to_string();
    let retried = TaskOptions::new().max_retries(3).retry_exceptions(true);
    let c = counter("flaky-retried");
    assert_eq!(
        flaky.options(retried.clone()).remote(c, 2).get_blocking(),
        Ok(3),
        "two panics, then a value, on the third run"
    );
    let c = counter("flaky-exhausted");
    match flaky.options(retried).remote(c.clone(), 10).get_blocking() {
        Err(GetError::Task(TaskError::Panicked { message, .. })) => {
            assert!(message.contains("flaky run 4"), "{message}")
        }
        other => panic!("expected the fourth run's panic, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&c).unwrap(),
        "4",
        "1 run + 3 retries"
    );
    let c = counter("flaky-once");
    match flaky
        .options(TaskOptions::new().max_retries(3))
        .remote(c.clone(), 1)
        .get_blocking()
    {
        Err(GetError::Task(TaskError::Panicked { .. })) => {}
        other => panic!("panics are not retried by default, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "1");
}

/// Why a [`fetch`] failed: a kind worth a retry, and one that is not.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum FetchError {
    /// The other side did not answer in time.
    Timeout(u32),
    /// The thing is not there: running again will not help.
    NotFound(u32),
}

/// Whether a fetch is worth running again (`retry_if`).
fn transient(e: &FetchError) -> bool {
    matches!(e, FetchError::Timeout(_))
}

/// Returns `Err(Timeout)` until it has run `fail_times` times (counted in the file
/// `counter`), then `Err(NotFound)` if `missing`, or how many runs it took.
fn fetch_runs(counter: &str, fail_times: u32, missing: bool) -> Result<u32, FetchError> {
    let path = PathBuf::from(counter);
    let runs = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&path, runs.to_string()).unwrap();
    match (runs <= fail_times, missing) {
        (true, _) => Err(FetchError::Timeout(runs)),
        (false, true) => Err(FetchError::NotFound(runs)),
        (false, false) => Ok(runs),
    }
}

/// Any `Err` it returns is worth a retry (with `retry_exceptions`).
#[shoal::remote]
fn fetch(counter: String, fail_times: u32, missing: bool) -> Result<u32, FetchError> {
    fetch_runs(&counter, fail_times, missing)
}

/// Only the kinds `transient` names are worth a retry.
#[shoal::remote(retry_if = transient)]
fn fetch_transient(counter: String, fail_times: u32, missing: bool) -> Result<u32, FetchError> {
    fetch_runs(&counter, fail_times, missing)
}

/// Ray's `retry_exceptions`, for the Rust way of failing: a function that returns an `Err`
/// runs again within its retries when asked to, and past them the last `Err` is its value;
/// `retry_if` narrows the kinds of error retried (as Ray's list of exception classes).
#[test]
fn retry_exceptions_runs_a_task_that_returned_an_error_again() {
    let _turn = serial();
    let counter = |name: &str| marker(name).display().to_string();
    let retried = || TaskOptions::new().max_retries(3).retry_exceptions(true);
    let runs = |c: &str| std::fs::read_to_string(c).unwrap();
    // Two timeouts, then a value on the third run.
    let c = counter("fetch-retried");
    assert_eq!(
        fetch.options(retried()).remote(c, 2, false).get_blocking(),
        Ok(Ok(3))
    );
    // Past its retries, the last `Err` is its value.
    let c = counter("fetch-exhausted");
    assert_eq!(
        fetch
            .options(retried())
            .remote(c.clone(), 10, false)
            .get_blocking(),
        Ok(Err(FetchError::Timeout(4)))
    );
    assert_eq!(runs(&c), "4", "1 run + 3 retries");
    // Not asked: one run.
    let c = counter("fetch-once");
    assert_eq!(
        fetch
            .options(TaskOptions::new().max_retries(3))
            .remote(c.clone(), 1, false)
            .get_blocking(),
        Ok(Err(FetchError::Timeout(1)))
    );
    assert_eq!(runs(&c), "1");
    // Without `retry_if`, every kind is retried; with it, only those it names.
    let c = counter("fetch-any-kind");
    assert_eq!(
        fetch
            .options(retried())
            .remote(c.clone(), 1, true)
            .get_blocking(),
        Ok(Err(FetchError::NotFound(4)))
    );
    assert_eq!(runs(&c), "4");
    let c = counter("fetch-kinds");
    assert_eq!(
        fetch_transient
            .options(retried())
            .remote(c.clone(), 1, true)
            .get_blocking(),
        Ok(Err(FetchError::NotFound(2))),
        "a timeout retried, then a NotFound kept"
    );
    assert_eq!(runs(&c), "2");
    let c = counter("fetch-kinds-ok");
    assert_eq!(
        fetch_transient
            .options(retried())
            .remote(c, 2, false)
            .get_blocking(),
        Ok(Ok(3))
    );
}
