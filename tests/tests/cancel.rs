//! `shoal::cancel` on an embedded node with real worker processes (issue 14): a queued task
//! never runs, a running blocking task sees `is_cancelled` and frees its slot, an `async`
//! one is dropped at its `.await`, a forced cancel ends the worker, a recursive cancel
//! reaches the task's children, and actor calls: an `async` call in flight is dropped and a
//! call queued behind it never runs. Only the submitter may cancel.
//!
//! Each test gates its tasks on a custom resource of its own (one unit), so that the tests
//! of this binary, which share one embedded node, do not wait for one another.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal::{CancelError, CancelOptions, GetError, InitOptions, TaskError, TaskOptions};

/// How long any one wait here may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

fn init() -> shoal::Shoal {
    let resources = ["queued", "blocking", "async", "force", "parent", "child"]
        .iter()
        .map(|r| (r.to_string(), 1.0))
        .collect();
    shoal::init_with(InitOptions {
        force_embedded: true,
        cpus: Some(4.0),
        resources,
        ..Default::default()
    })
    .expect("an embedded node")
}

/// A fresh directory for a test's marker files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-cancel-{}-{name}", std::process::id()));
    // A directory left by an earlier run of this pid is stale.
    if d.exists() {
        std::fs::remove_dir_all(&d).expect("remove a stale directory");
    }
    std::fs::create_dir_all(&d).expect("a marker directory");
    d
}

/// Waits until `path` exists.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_cancelled<T: std::fmt::Debug>(r: Result<T, GetError>) -> bool {
    match r {
        Err(GetError::Task(TaskError::Cancelled { .. })) => true,
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

fn on(resource: &str) -> TaskOptions {
    TaskOptions::new().num_cpus(0.0).resource(resource, 1.0)
}

/// Marks `dir/name.started`, then spins until it is cancelled (marking `dir/name.saw`), or
/// for a minute at most.
#[shoal::remote]
fn spin(dir: String, name: String) -> u64 {
    let dir = PathBuf::from(dir);
    std::fs::write(dir.join(format!("{name}.started")), b"").expect("marker");
    let end = Instant::now() + LIMIT;
    let mut turns = 0;
    while Instant::now() < end {
        if shoal::is_cancelled() {
            std::fs::write(dir.join(format!("{name}.saw")), b"").expect("marker");
            return turns;
        }
        turns += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    turns
}

#[shoal::remote]
fn quick() -> u64 {
    7
}

#[test]
fn a_queued_task_never_runs_and_a_running_one_sees_the_cancel() {
    init();
    let d = dir("queued");
    let path = d.to_string_lossy().to_string();
    let first = spin
        .options(on("queued"))
        .remote(path.clone(), "first".to_string());
    wait_for(&d.join("first.started"));
    // The only unit is the first's: the second waits in the queue.
    let second = spin
        .options(on("queued"))
        .remote(path.clone(), "second".to_string());
    shoal::cancel(&second).unwrap();
    assert!(is_cancelled(second.get_blocking_timeout(LIMIT)));
    // The running one fails at once, sees the cancel and ends: its unit is free again.
    shoal::cancel(&first).unwrap();
    assert!(is_cancelled(first.get_blocking_timeout(LIMIT)));
    wait_for(&d.join("first.saw"));
    assert_eq!(
        quick
            .options(on("queued"))
            .remote()
            .get_blocking_timeout(LIMIT),
        Ok(7)
    );
    assert!(
        !d.join("second.started").exists(),
        "the cancelled queued task never ran"
    );
    // Cancelling a finished task does nothing; a cancelled one, again, neither.
    let done = quick.remote();
    assert_eq!(done.get_blocking_timeout(LIMIT), Ok(7));
    assert_eq!(shoal::cancel(&done), Ok(()));
    assert_eq!(done.get_blocking(), Ok(7));
    assert_eq!(shoal::cancel(&second), Ok(()));
}

/// Marks `dir/async.started`, then sleeps a minute; marks `dir/async.dropped` when its
/// future is dropped.
#[shoal::remote]
async fn sleepy(dir: String) -> u64 {
    struct Dropped(PathBuf);
    impl Drop for Dropped {
        fn drop(&mut self) {
            std::fs::write(&self.0, b"").expect("marker");
        }
    }
    let dir = PathBuf::from(dir);
    let _guard = Dropped(dir.join("async.dropped"));
    std::fs::write(dir.join("async.started"), b"").expect("marker");
    tokio::time::sleep(LIMIT).await;
    1
}

#[test]
fn an_async_task_is_dropped_at_its_await_and_its_worker_lives_on() {
    init();
    let d = dir("async");
    let r = sleepy
        .options(on("async"))
        .remote(d.to_string_lossy().to_string());
    wait_for(&d.join("async.started"));
    let t0 = Instant::now();
    shoal::cancel(&r).unwrap();
    assert!(is_cancelled(r.get_blocking_timeout(LIMIT)));
    wait_for(&d.join("async.dropped"));
    assert!(
        t0.elapsed() < LIMIT / 2,
        "dropped long before its sleep ended"
    );
    // The unit is free once the worker reported the end.
    assert_eq!(
        quick
            .options(on("async"))
            .remote()
            .get_blocking_timeout(LIMIT),
        Ok(7)
    );
}

/// Writes its pid to `dir/pid`, then spins a minute, whatever cancels say.
#[shoal::remote]
fn stubborn(dir: String) -> u64 {
    let pid = std::process::id();
    let tmp = PathBuf::from(&dir).join("pid.tmp");
    std::fs::write(&tmp, pid.to_string()).expect("pid");
    std::fs::rename(&tmp, PathBuf::from(&dir).join("pid")).expect("pid");
    let end = Instant::now() + LIMIT;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    1
}

#[test]
fn a_forced_cancel_ends_the_worker_running_the_task() {
    init();
    let d = dir("force");
    let r = stubborn
        .options(on("force").max_retries(3))
        .remote(d.to_string_lossy().to_string());
    wait_for(&d.join("pid"));
    let pid: i32 = std::fs::read_to_string(d.join("pid"))
        .unwrap()
        .parse()
        .unwrap();
    shoal::cancel_with(&r, CancelOptions::new().force(true)).unwrap();
    assert!(is_cancelled(r.get_blocking_timeout(LIMIT)));
    // The worker exits; the task is not run again though it had retries.
    let deadline = Instant::now() + LIMIT;
    // SAFETY: kill with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "worker {pid} still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        quick
            .options(on("force"))
            .remote()
            .get_blocking_timeout(LIMIT),
        Ok(7)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("pid")).unwrap(),
        pid.to_string(),
        "not run again"
    );
}

/// Submits a spinning child and waits for it.
#[shoal::remote]
fn parent(dir: String) -> u64 {
    let child = spin.options(on("child")).remote(dir, "child".to_string());
    child.get_blocking().unwrap_or(0)
}

#[test]
fn a_recursive_cancel_reaches_the_tasks_children() {
    init();
    let d = dir("recursive");
    let r = parent
        .options(on("parent"))
        .remote(d.to_string_lossy().to_string());
    wait_for(&d.join("child.started"));
    shoal::cancel(&r).unwrap();
    assert!(is_cancelled(r.get_blocking_timeout(LIMIT)));
    // The child saw its own cancel.
    wait_for(&d.join("child.saw"));
    assert_eq!(
        quick
            .options(on("child"))
            .remote()
            .get_blocking_timeout(LIMIT),
        Ok(7)
    );
}

#[test]
fn only_the_submitter_may_cancel_and_a_put_is_no_task() {
    init();
    let value = shoal::put(&5u64).unwrap();
    assert_eq!(
        shoal::cancel(&value),
        Err(CancelError::NotSubmitter(value.id()))
    );
    // A ref that came back from a task, not submitted here.
    let inner = passes_on.remote().get_blocking_timeout(LIMIT).unwrap();
    assert_eq!(
        shoal::cancel(&inner),
        Err(CancelError::NotSubmitter(inner.id()))
    );
    assert_eq!(inner.get_blocking_timeout(LIMIT), Ok(7));
}

/// Returns the ref of a task it submitted.
#[shoal::remote]
fn passes_on() -> shoal::ObjectRef<u64> {
    quick.remote()
}

#[derive(Default)]
pub struct Sleeper {
    n: u64,
}

#[shoal::actor]
impl Sleeper {
    pub fn new() -> Self {
        Sleeper { n: 0 }
    }

    /// Holds the actor for a minute.
    pub async fn hold(&mut self) -> u64 {
        tokio::time::sleep(LIMIT).await;
        self.n
    }

    pub async fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    pub async fn get(&self) -> u64 {
        self.n
    }
}

#[test]
fn actor_calls_in_flight_are_dropped_and_queued_ones_never_run() {
    init();
    let actor = Sleeper::remote();
    assert_eq!(actor.get().get_blocking_timeout(LIMIT), Ok(0));
    let hold = actor.hold();
    let incr = actor.incr();
    // In this order: the worker learns of the queued call's cancel before the one that
    // holds the actor ends.
    shoal::cancel(&incr).unwrap();
    shoal::cancel(&hold).unwrap();
    assert!(is_cancelled(hold.get_blocking_timeout(LIMIT)));
    assert!(is_cancelled(incr.get_blocking_timeout(LIMIT)));
    assert_eq!(
        actor.get().get_blocking_timeout(LIMIT),
        Ok(0),
        "the cancelled increment never ran"
    );
    assert_eq!(
        shoal::cancel_with(&actor.get(), CancelOptions::new().force(true)),
        Err(CancelError::ForceActorCall)
    );
    assert_eq!(actor.incr().get_blocking_timeout(LIMIT), Ok(1));
}
