//! Actors on an embedded node: each actor lives in a worker process of its own.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use std::time::{Duration, Instant};

use shoal::{ActorError, ActorHandle, ActorOptions, GetError, ObjectRef, TaskError};

use shoal_tests::parent_of;

pub struct Counter {
    n: i64,
}

#[shoal::actor]
impl Counter {
    pub fn new(start: i64) -> Self {
        Counter { n: start }
    }

    pub fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    pub fn get(&self) -> i64 {
        self.n
    }

    /// Changes the state, then panics: the change stays (as in Ray).
    pub fn add_then_panic(&mut self, by: i64) -> i64 {
        self.n += by;
        panic!("boom at {}", self.n)
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Creates `marker` when it starts, then sleeps: a call known to be running.
    pub fn marked_slow_get(&self, marker: String, ms: u64) -> i64 {
        std::fs::write(&marker, b"started").expect("marker");
        std::thread::sleep(Duration::from_millis(ms));
        self.n
    }

    pub fn slow_get(&self, ms: u64) -> i64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.n
    }
}

/// Records the sequence numbers each caller sends and counts those out of order.
#[derive(Default)]
pub struct Recorder {
    last: HashMap<u32, u64>,
    out_of_order: u64,
    calls: u64,
}

#[shoal::actor]
impl Recorder {
    pub fn new() -> Self {
        Recorder::default()
    }

    pub fn record(&mut self, caller: u32, seq: u64) -> u64 {
        let last = self.last.entry(caller).or_insert(0);
        if seq != *last + 1 {
            self.out_of_order += 1;
        }
        *last = seq;
        self.calls += 1;
        seq
    }

    pub fn summary(&self) -> (u64, u64, Vec<(u32, u64)>) {
        let mut last: Vec<(u32, u64)> = self.last.iter().map(|(k, v)| (*k, *v)).collect();
        last.sort();
        (self.calls, self.out_of_order, last)
    }
}

/// An actor that calls another actor through a handle it was given.
pub struct Relay {
    target: ActorHandle<Counter>,
}

#[shoal::actor]
impl Relay {
    pub fn new(target: ActorHandle<Counter>) -> Self {
        Relay { target }
    }

    pub fn forward(&self, by: i64) -> i64 {
        self.target
            .incr(by)
            .get_blocking()
            .expect("the target answers")
    }
}

/// Async methods: with a max concurrency above one, `&self` calls overlap while they wait.
#[derive(Default)]
pub struct Rendezvous {
    arrived: AtomicU32,
}

#[shoal::actor]
impl Rendezvous {
    pub fn new() -> Self {
        Rendezvous::default()
    }

    /// Arrives, then waits (up to `limit_ms`) for `n` arrivals. True if they all came.
    pub async fn meet(&self, n: u32, limit_ms: u64) -> bool {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_millis(limit_ms);
        while self.arrived.load(Ordering::SeqCst) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

/// A barrier for a batch of async calls: each call arrives, then waits until `n` have.
#[derive(Default)]
pub struct Batch {
    arrived: AtomicU32,
    all_in: tokio::sync::Notify,
}

#[shoal::actor]
impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    /// Arrives, then waits (up to `limit_ms`) until `n` calls have. True if they all came.
    pub async fn gather(&self, n: u32, limit_ms: u64) -> bool {
        let wait = async {
            let mut notified = std::pin::pin!(self.all_in.notified());
            // Registered before arriving, so the last arrival's wake-up is not missed.
            notified.as_mut().enable();
            if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 >= n {
                self.all_in.notify_waiters();
                return;
            }
            while self.arrived.load(Ordering::SeqCst) < n {
                notified.as_mut().await;
                notified.set(self.all_in.notified());
                notified.as_mut().enable();
            }
        };
        tokio::time::timeout(Duration::from_millis(limit_ms), wait)
            .await
            .is_ok()
    }
}

pub struct Fragile;

#[shoal::actor]
impl Fragile {
    pub fn new(fail: bool) -> Self {
        if fail {
            panic!("constructor refuses");
        }
        Fragile
    }

    pub fn ok(&self) -> bool {
        true
    }
}

/// Its first process dies in the constructor (after `marker` is made, so the calls sent
/// meanwhile are at it); the restarted one lives.
pub struct DiesInConstructor {
    incarnation: u32,
}

#[shoal::actor]
impl DiesInConstructor {
    pub fn new(marker: String) -> Self {
        if std::path::Path::new(&marker).exists() {
            return DiesInConstructor { incarnation: 1 };
        }
        std::fs::write(&marker, b"first").expect("marker");
        std::thread::sleep(Duration::from_millis(300));
        std::process::abort()
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }
}

/// Blocking methods that meet: each waits until all three have arrived.
pub struct Meeting {
    all_here: std::sync::Barrier,
    met: std::sync::atomic::AtomicU64,
}

#[shoal::actor(threaded)]
impl Meeting {
    pub fn new(size: usize) -> Self {
        Meeting {
            all_here: std::sync::Barrier::new(size),
            met: AtomicU64::new(0),
        }
    }

    pub fn meet(&self) -> u64 {
        self.all_here.wait();
        self.met.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn reset(&mut self) -> u64 {
        std::mem::replace(self.met.get_mut(), 0)
    }

    pub async fn met(&self) -> u64 {
        self.met.load(Ordering::SeqCst)
    }
}

/// Boxes numbers: its blocking method returns a ref made inside it, on a thread of its pool.
#[derive(Default)]
pub struct Boxer;

#[shoal::actor(threaded)]
impl Boxer {
    pub fn new() -> Self {
        Boxer
    }

    pub fn boxed(&self, x: u64) -> ObjectRef<u64> {
        shoal::put(&x).expect("put")
    }
}

/// Calls of the `io` group wait at a gate that a call outside the group opens.
#[derive(Default)]
pub struct Gated {
    open: tokio::sync::Notify,
    opened: std::sync::atomic::AtomicBool,
    inside: AtomicU32,
    most_inside: AtomicU32,
}

#[shoal::actor]
impl Gated {
    pub fn new() -> Self {
        Gated::default()
    }

    /// Waits until the gate is open; returns how many io calls were inside at most.
    #[concurrency_group("io")]
    pub async fn through_gate(&self) -> u32 {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_inside.fetch_max(now, Ordering::SeqCst);
        while !self.opened.load(Ordering::SeqCst) {
            let woken = self.open.notified();
            if self.opened.load(Ordering::SeqCst) {
                break;
            }
            woken.await;
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.most_inside.load(Ordering::SeqCst)
    }

    pub async fn open_gate(&self) {
        self.opened.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }
}

#[shoal::remote]
fn slow_value(ms: u64, v: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    v
}

/// A task that gets an actor's handle and calls it directly.
#[shoal::remote]
fn bump(counter: ActorHandle<Counter>, times: u32) -> i64 {
    let mut last = 0;
    for _ in 0..times {
        last = counter.incr(1).get_blocking().expect("incr");
    }
    last
}

/// A caller task: sends `n` numbered calls to the recorder without waiting, then waits for
/// the last.
/// A counter's value, read from a task (another process).
#[shoal::remote]
fn ask_through_task(counter: ActorHandle<Counter>) -> Result<i64, String> {
    counter.get().get_blocking().map_err(|e| e.to_string())
}

#[shoal::remote]
fn send_in_order(rec: ActorHandle<Recorder>, caller: u32, n: u64) -> u64 {
    let mut last = None;
    for seq in 1..=n {
        last = Some(rec.record(caller, seq));
    }
    last.map_or(0, |r| r.get_blocking().expect("record"))
}

#[test]
fn an_actor_keeps_state_in_its_own_process() {
    shoal::init().unwrap();
    let c = Counter::remote(10);
    let refs: Vec<ObjectRef<i64>> = (0..100).map(|_| c.incr(1)).collect();
    let values: Vec<i64> = refs.iter().map(|r| r.get_blocking().unwrap()).collect();
    assert_eq!(values, (11..=110).collect::<Vec<_>>());
    assert_eq!(c.get().get_blocking().unwrap(), 110);
    let pid = c.pid().get_blocking().unwrap();
    assert_ne!(pid, std::process::id());
    assert_eq!(parent_of(pid), Some(std::process::id()));
    // The same process serves every call.
    assert_eq!(c.pid().get_blocking().unwrap(), pid);
}

#[test]
fn per_caller_order_holds_over_ten_thousand_calls_from_each_caller() {
    shoal::init().unwrap();
    let rec = Recorder::remote();
    const N: u64 = 10_000;
    // Three tasks (three processes) and this driver call the recorder at once.
    let callers: Vec<ObjectRef<u64>> = (1..=3)
        .map(|caller| send_in_order.remote(rec.clone(), caller, N))
        .collect();
    let mut mine = Vec::new();
    for seq in 1..=N {
        mine.push(rec.record(0, seq));
    }
    // A call whose argument is not ready yet holds back the caller's later calls, and only
    // those.
    let late = slow_value.remote(300, N + 1);
    let with_late_arg = rec.record(0, &late);
    let after_late = rec.record(0, N + 2);
    assert_eq!(mine.last().unwrap().get_blocking().unwrap(), N);
    for c in &callers {
        assert_eq!(c.get_blocking().unwrap(), N);
    }
    assert_eq!(with_late_arg.get_blocking().unwrap(), N + 1);
    assert_eq!(after_late.get_blocking().unwrap(), N + 2);
    let (calls, out_of_order, last) = rec.summary().get_blocking().unwrap();
    // N+2 was ready long before N+1 (whose argument took 300 ms) but was sent after it.
    assert_eq!(calls, 4 * N + 2);
    assert_eq!(
        out_of_order, 0,
        "calls ran out of the order their caller sent them"
    );
    assert_eq!(last, vec![(0, N + 2), (1, N), (2, N), (3, N)]);
}

#[test]
fn handles_pass_into_tasks_and_other_actors() {
    shoal::init().unwrap();
    let c = Counter::remote(0);
    let by_tasks: Vec<ObjectRef<i64>> = (0..3).map(|_| bump.remote(c.clone(), 20)).collect();
    for r in &by_tasks {
        assert!(r.get_blocking().unwrap() <= 60);
    }
    assert_eq!(c.get().get_blocking().unwrap(), 60);
    let relay = Relay::remote(c.clone());
    assert_eq!(relay.forward(40).get_blocking().unwrap(), 100);
    assert_eq!(c.get().get_blocking().unwrap(), 100);
}

#[test]
fn a_panicking_method_fails_only_its_call() {
    shoal::init().unwrap();
    let c = Counter::remote(0);
    c.incr(5);
    let err = c.add_then_panic(2).get_blocking().unwrap_err();
    match err {
        GetError::Task(TaskError::Panicked { message, origin }) => {
            assert!(message.contains("boom at 7"), "{message}");
            // It names the class and the method, and where it panicked.
            let origin = origin.expect("where it panicked");
            assert_eq!(origin.function, "actors::Counter::add_then_panic");
            let at = origin.location.unwrap_or_default();
            assert!(at.starts_with("tests/tests/actors.rs:"), "{at}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(c.incr(1).get_blocking().unwrap(), 8);
}

/// An actor that ends itself on request.
#[derive(Default)]
pub struct Quitter;

#[shoal::actor]
impl Quitter {
    pub fn new() -> Self {
        Quitter
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn quit(&self) -> u32 {
        shoal::exit_actor()
    }
}

#[shoal::remote]
fn quits_outside_an_actor() -> u32 {
    shoal::exit_actor()
}

#[test]
fn exit_actor_ends_the_actor_for_good_and_frees_its_name() {
    shoal::init().unwrap();
    let options = ActorOptions::new().name("quitter").max_restarts(3);
    let q = Quitter::options(options.clone()).remote();
    let pid = q.pid().get_blocking().unwrap();
    let quit = q.quit();
    // Made after the quit: it fails too, with no restart.
    let after = q.pid();
    for r in [quit, after] {
        match r.get_blocking_timeout(Duration::from_secs(30)) {
            Err(GetError::Task(TaskError::ActorKilled { actor, reason })) => {
                assert_eq!(actor, ActorHandle::id(&q));
                assert!(reason.contains("exit_actor"), "{reason}");
            }
            other => panic!("expected ActorKilled, got {other:?}"),
        }
    }
    wait_until(Duration::from_secs(10), || !alive(pid));
    // Its name is free again.
    assert!(matches!(
        shoal::get_actor::<Quitter>("quitter"),
        Err(ActorError::NotFound(_))
    ));
    let again = Quitter::options(options).remote();
    assert_ne!(again.pid().get_blocking().unwrap(), pid);
    shoal::kill(&again);
}

#[test]
fn exit_actor_outside_an_actor_is_a_panic_of_the_task() {
    shoal::init().unwrap();
    match quits_outside_an_actor.remote().get_blocking() {
        Err(GetError::Task(TaskError::Panicked { message, .. })) => {
            assert!(message.contains("outside an actor"), "{message}")
        }
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[test]
fn kill_fails_later_calls() {
    shoal::init().unwrap();
    let c = Counter::remote(0);
    assert_eq!(c.incr(1).get_blocking().unwrap(), 1);
    let pid = c.pid().get_blocking().unwrap();
    shoal::kill(&c);
    match c.get().get_blocking() {
        Err(GetError::Task(TaskError::ActorKilled { actor, .. })) => {
            assert_eq!(actor, ActorHandle::id(&c))
        }
        other => panic!("expected ActorKilled, got {other:?}"),
    }
    // Its process is gone.
    wait_until(Duration::from_secs(10), || !alive(pid));
}

#[test]
fn sigkill_without_restarts_fails_calls_in_flight_and_later() {
    shoal::init().unwrap();
    let c = Counter::remote(3);
    let pid = c.pid().get_blocking().unwrap();
    let in_flight = running_slow_call(&c, "no-restart");
    sigkill(pid);
    for r in [in_flight, c.get()] {
        match r.get_blocking_timeout(Duration::from_secs(30)) {
            Err(GetError::Task(TaskError::ActorDied { pid: p, exit, .. })) => {
                assert_eq!(p, pid);
                assert_eq!(exit.signal, Some(9));
            }
            other => panic!("expected ActorDied, got {other:?}"),
        }
    }
}

#[test]
fn sigkill_with_restarts_reruns_the_constructor() {
    shoal::init().unwrap();
    let c = Counter::options(ActorOptions::new().max_restarts(1)).remote(100);
    assert_eq!(c.incr(1).get_blocking().unwrap(), 101);
    let pid = c.pid().get_blocking().unwrap();
    let in_flight = running_slow_call(&c, "restart");
    sigkill(pid);
    assert!(matches!(
        in_flight.get_blocking_timeout(Duration::from_secs(30)),
        Err(GetError::Task(TaskError::ActorDied { .. }))
    ));
    // Restarted with its original arguments: the state is the constructor's again.
    assert_eq!(c.get().get_blocking().unwrap(), 100);
    let new_pid = c.pid().get_blocking().unwrap();
    assert_ne!(new_pid, pid);
    // No restarts left: the next death is final.
    sigkill(new_pid);
    assert!(matches!(
        c.get().get_blocking_timeout(Duration::from_secs(30)),
        Err(GetError::Task(TaskError::ActorDied { .. }))
    ));
}

/// Ray's rule for an actor with restarts left (issue 14 item 3): only a call that may have
/// begun fails with its process; the calls queued behind it, at the node or at the process,
/// wait for the restart and run there, in order.
#[test]
fn calls_behind_a_call_that_dies_with_its_process_run_after_the_restart() {
    shoal::init().unwrap();
    let c = Counter::options(ActorOptions::new().max_restarts(1)).remote(100);
    let pid = c.pid().get_blocking().unwrap();
    let in_flight = running_slow_call(&c, "behind");
    let behind = [c.incr(1), c.incr(2), c.get()];
    sigkill(pid);
    assert!(matches!(
        in_flight.get_blocking_timeout(Duration::from_secs(30)),
        Err(GetError::Task(TaskError::ActorDied { .. }))
    ));
    let got: Vec<i64> = behind
        .iter()
        .map(|r| r.get_blocking_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![101, 103, 103],
        "run on the restarted actor, in order"
    );
    assert_ne!(c.pid().get_blocking().unwrap(), pid);
}

/// Ray's `max_task_retries`: a call its process may have begun when it died runs again on
/// the restarted actor (at least once, rather than at most once).
#[test]
fn with_max_task_retries_a_call_that_died_with_its_process_runs_again() {
    shoal::init().unwrap();
    let c = Counter::options(ActorOptions::new().max_restarts(1).max_task_retries(1)).remote(100);
    assert_eq!(c.incr(1).get_blocking(), Ok(101));
    let pid = c.pid().get_blocking().unwrap();
    let marker = std::env::temp_dir().join(format!(
        "shoal-actor-test-{}-task-retries.started",
        std::process::id()
    ));
    if marker.exists() {
        std::fs::remove_file(&marker).unwrap();
    }
    let in_flight = c.marked_slow_get(marker.display().to_string(), 1_000);
    wait_until(Duration::from_secs(30), || marker.exists());
    sigkill(pid);
    // Run again on the restarted actor, whose state is the constructor's.
    assert_eq!(
        in_flight.get_blocking_timeout(Duration::from_secs(30)),
        Ok(100)
    );
    assert_ne!(c.pid().get_blocking().unwrap(), pid);
    std::fs::remove_file(&marker).unwrap();
}

/// Calls sent while the first process runs the constructor, which then crashes (the process
/// dies; not a panic, which fails the actor for good): none of them began, and all run on the
/// restarted actor.
#[test]
fn calls_made_while_a_crashing_constructor_runs_wait_for_the_restart() {
    shoal::init().unwrap();
    let marker = std::env::temp_dir().join(format!(
        "shoal-actor-test-{}-dies-in-constructor",
        std::process::id()
    ));
    if marker.exists() {
        std::fs::remove_file(&marker).unwrap();
    }
    let a = DiesInConstructor::options(ActorOptions::new().max_restarts(1))
        .remote(marker.display().to_string());
    let calls: Vec<_> = (0..3).map(|_| a.incarnation()).collect();
    for r in calls {
        assert_eq!(r.get_blocking_timeout(Duration::from_secs(30)), Ok(1));
    }
    assert!(marker.exists(), "the first process ran the constructor");
    std::fs::remove_file(&marker).unwrap();
}

/// Ray's threaded actors (issue 14 item 4): the blocking `&self` methods of a
/// `#[shoal::actor(threaded)]` actor run on a pool of its max concurrency, so three calls
/// that each wait for the others all finish; a `&mut self` one still runs alone.
#[test]
fn blocking_methods_of_a_threaded_actor_overlap_up_to_max_concurrency() {
    shoal::init().unwrap();
    let m = Meeting::options(ActorOptions::new().max_concurrency(3)).remote(3);
    for round in 0..2 {
        let calls: Vec<_> = (0..3).map(|_| m.meet()).collect();
        let mut got: Vec<u64> = calls
            .iter()
            .map(|r| r.get_blocking_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 3], "round {round}");
        assert_eq!(m.met().get_blocking(), Ok(3));
        assert_eq!(m.reset().get_blocking(), Ok(3));
    }
}

/// Ray's concurrency groups (issue 14 item 4): calls of a group run beside the others, at
/// most the group's number at once. Here the gate's opener runs while the group's calls,
/// and the actor's only other slot, wait for it; a group the options do not give is refused.
#[test]
fn a_concurrency_group_runs_beside_the_other_calls_up_to_its_size() {
    shoal::init().unwrap();
    let g = Gated::options(
        ActorOptions::new()
            .max_concurrency(1)
            .concurrency_group("io", 2),
    )
    .remote();
    let waiting: Vec<_> = (0..3).map(|_| g.through_gate()).collect();
    // Outside the group: it runs though the group's calls wait.
    g.open_gate()
        .get_blocking_timeout(Duration::from_secs(30))
        .unwrap();
    for r in waiting {
        let most = r.get_blocking_timeout(Duration::from_secs(30)).unwrap();
        assert!(most <= 2, "at most the group's two calls at once: {most}");
    }
    let ungrouped = Gated::remote();
    match ungrouped
        .through_gate()
        .get_blocking_timeout(Duration::from_secs(30))
    {
        Err(GetError::Task(TaskError::InvalidOptions { reason })) => {
            assert!(reason.contains("`io`"), "{reason}")
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
}

#[test]
fn a_failing_constructor_fails_the_calls() {
    shoal::init().unwrap();
    let f = Fragile::remote(true);
    match f.ok().get_blocking() {
        Err(GetError::Task(TaskError::ActorCreationFailed { message, .. })) => {
            assert!(message.contains("constructor refuses"), "{message}")
        }
        other => panic!("expected ActorCreationFailed, got {other:?}"),
    }
    assert!(Fragile::remote(false).ok().get_blocking().unwrap());
}

#[test]
fn async_methods_overlap_up_to_max_concurrency() {
    shoal::init().unwrap();
    let r = Rendezvous::options(ActorOptions::new().max_concurrency(2)).remote();
    let (a, b) = (r.meet(2, 20_000), r.meet(2, 20_000));
    assert!(a.get_blocking().unwrap() && b.get_blocking().unwrap());
    // One at a time, the first call cannot see the second arrive.
    let serial = Rendezvous::options(ActorOptions::new().max_concurrency(1)).remote();
    let (a, b) = (serial.meet(2, 300), serial.meet(2, 300));
    assert!(!a.get_blocking().unwrap());
    assert!(b.get_blocking().unwrap());
}

#[test]
fn an_async_actor_holds_as_many_waiting_calls_as_its_max_concurrency() {
    // Ray's case: 4,000 calls that each wait for the whole batch, on an actor that allows
    // 8,000 at once. The node once sent an actor at most 1,024 calls, and the rest waited
    // behind calls that were waiting themselves.
    shoal::init().unwrap();
    const N: u32 = 4000;
    let batch = Batch::options(ActorOptions::new().max_concurrency(8000)).remote();
    let calls: Vec<ObjectRef<bool>> = (0..N).map(|_| batch.gather(N, 60_000)).collect();
    for (i, c) in calls.iter().enumerate() {
        assert!(
            c.get_blocking().unwrap(),
            "call {i} saw the batch incomplete"
        );
    }
}

#[test]
fn zero_cpu_actors_do_not_hold_cpus_and_cpu_actors_do() {
    let shoal = shoal::init().unwrap();
    let total = shoal.status().unwrap().resources_total.get_milli("CPU");
    // More zero-CPU actors than CPUs, all alive at once, and tasks still run.
    let many: Vec<ActorHandle<Counter>> = (0..6).map(Counter::remote).collect();
    for (i, c) in many.iter().enumerate() {
        assert_eq!(c.get().get_blocking().unwrap(), i as i64);
    }
    assert_eq!(slow_value.remote(0, 7).get_blocking().unwrap(), 7);
    // An actor asking for more than the node has is infeasible; its calls say so.
    let huge =
        Counter::options(ActorOptions::new().num_cpus(total as f64 / 1000.0 + 1.0)).remote(0);
    match huge.get().get_blocking() {
        Err(GetError::Task(TaskError::ActorCreationFailed { message, .. })) => {
            assert!(message.contains("infeasible"), "{message}")
        }
        other => panic!("expected an infeasible creation, got {other:?}"),
    }
}

#[test]
fn dropping_the_last_handle_ends_the_actor_after_its_calls() {
    shoal::init().unwrap();
    let c = Counter::remote(0);
    let pid = c.pid().get_blocking().unwrap();
    let last = c.slow_get(200);
    drop(c);
    // The call made before the drop still finishes.
    assert_eq!(last.get_blocking().unwrap(), 0);
    wait_until(Duration::from_secs(10), || !alive(pid));
}

#[test]
fn a_handle_passed_to_a_task_counts_and_the_last_drop_ends_the_actor() {
    shoal::init().unwrap();
    let c = Counter::remote(0);
    let pid = c.pid().get_blocking().unwrap();
    assert_eq!(bump.remote(c.clone(), 5).get_blocking().unwrap(), 5);
    // The task's copy is gone with the task; this is the last handle.
    drop(c);
    wait_until(Duration::from_secs(10), || !alive(pid));
}

#[test]
fn an_actor_kept_by_another_actor_holds_its_cpus_until_that_one_goes() {
    let shoal = shoal::init().unwrap();
    let cpus = shoal.status().unwrap().resources_total.get_milli("CPU") as f64 / 1000.0;
    let all = || ActorOptions::new().num_cpus(cpus);
    let big = Counter::options(all()).remote(0);
    let relay = Relay::remote(big.clone());
    drop(big);
    // The relay's copy keeps it (and its CPUs).
    assert_eq!(relay.forward(1).get_blocking().unwrap(), 1);
    // With the relay gone, no handle is left: it ends, and an actor needing its CPUs is
    // placed.
    shoal::kill(&relay);
    let next = Counter::options(all()).remote(7);
    assert_eq!(
        next.get()
            .get_blocking_timeout(Duration::from_secs(60))
            .unwrap(),
        7
    );
}

#[test]
fn a_named_actor_ends_with_its_last_handle_and_frees_its_name() {
    shoal::init().unwrap();
    let name = format!("last-handle-{}", std::process::id());
    let c = Counter::options(ActorOptions::new().name(&name)).remote(1);
    let pid = c.pid().get_blocking().unwrap();
    let found = shoal::get_actor::<Counter>(&name).unwrap();
    // A handle found by name counts too.
    drop(c);
    assert_eq!(found.incr(1).get_blocking().unwrap(), 2);
    drop(found);
    wait_until(Duration::from_secs(10), || !alive(pid));
    let again = Counter::options(ActorOptions::new().name(&name)).remote(5);
    assert_eq!(again.get().get_blocking().unwrap(), 5);
}

#[test]
fn calls_past_max_pending_calls_fail_at_once_until_pending_ones_are_done() {
    shoal::init().unwrap();
    let name = format!("pending-{}", std::process::id());
    let options = ActorOptions::new()
        .name(&name)
        .concurrency_group("io", 8)
        .max_pending_calls(2);
    let gated = Gated::options(options).remote();
    // Two calls wait at the gate; the ref of the second is dropped, and it still counts.
    let first = gated.through_gate();
    drop(gated.through_gate());
    match gated.open_gate().get_blocking() {
        Err(GetError::PendingCallsLimitExceeded { actor, limit }) => {
            assert_eq!(actor, ActorHandle::id(&gated));
            assert_eq!(limit, 2);
        }
        other => panic!("expected the limit, got {other:?}"),
    }
    // A handle found by name has no limit: it opens the gate.
    shoal::get_actor::<Gated>(&name)
        .unwrap()
        .open_gate()
        .get_blocking()
        .unwrap();
    assert_eq!(first.get_blocking().unwrap(), 2);
    // Once the dropped call's result is here too, the handle takes calls again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match gated.through_gate().get_blocking() {
            Ok(_) => break,
            Err(GetError::PendingCallsLimitExceeded { .. }) if Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn one_name_in_two_namespaces_names_two_actors() {
    shoal::init().unwrap();
    let name = format!("shared-{}", std::process::id());
    let named = |ns: &str| ActorOptions::new().name(&name).namespace(ns);
    let left = Counter::options(named("left")).remote(1);
    let right = Counter::options(named("right")).remote(2);
    assert_ne!(ActorHandle::id(&left), ActorHandle::id(&right));
    let found = |ns: &str| shoal::get_actor_in::<Counter>(ns, &name);
    assert_eq!(found("left").unwrap().get().get_blocking().unwrap(), 1);
    assert_eq!(found("right").unwrap().get().get_blocking().unwrap(), 2);
    // Not in the default namespace, nor in another.
    assert_eq!(
        shoal::get_actor::<Counter>(&name).unwrap_err(),
        ActorError::NotFound(name.clone())
    );
    assert_eq!(
        found("elsewhere").unwrap_err(),
        ActorError::NotFound(format!("elsewhere/{name}"))
    );
    // Taken within its namespace.
    assert_eq!(
        Counter::options(named("left")).try_remote(0).unwrap_err(),
        ActorError::NameTaken(format!("left/{name}"))
    );
    // `remote` gives a handle all the same (one shape with `Type::remote`), whose calls
    // fail with the reason, and so do those of its copies in other processes.
    let refused = Counter::options(named("left")).remote(0);
    assert_ne!(ActorHandle::id(&refused), ActorHandle::id(&left));
    let taken = TaskError::ActorNameTaken {
        name: format!("left\0{name}"),
    };
    assert_eq!(
        refused.get().get_blocking(),
        Err(GetError::Task(taken.clone()))
    );
    assert_eq!(
        ask_through_task.remote(refused.clone()).get_blocking(),
        Ok(Err(GetError::Task(taken).to_string()))
    );
    // The one that holds the name is untouched.
    assert_eq!(left.get().get_blocking(), Ok(1));
    // A NUL, which separates the two on the wire, is refused in either.
    for options in [
        ActorOptions::new().name("a\0b"),
        ActorOptions::new().name("x").namespace("a\0b"),
    ] {
        match Counter::options(options).try_remote(0) {
            Err(ActorError::Create(GetError::Task(TaskError::InvalidOptions { reason }))) => {
                assert!(reason.contains("NUL"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn named_actors_from_a_second_program() {
    let shoal = shoal::init().unwrap();
    let name = format!("counter-{}", std::process::id());
    let c = Counter::options(ActorOptions::new().name(&name)).remote(1000);
    assert_eq!(c.incr(1).get_blocking().unwrap(), 1001);
    // The name is taken for another creation...
    assert_eq!(
        Counter::options(ActorOptions::new().name(&name))
            .try_remote(0)
            .unwrap_err(),
        ActorError::NameTaken(name.clone())
    );
    // ...but a get-or-create finds the live one.
    let again = Counter::options(ActorOptions::new().name(&name).get_if_exists(true)).remote(0);
    assert_eq!(ActorHandle::id(&again), ActorHandle::id(&c));
    // Lookup checks the class.
    assert!(matches!(
        shoal::get_actor::<Recorder>(&name),
        Err(ActorError::WrongClass { .. })
    ));
    assert_eq!(
        shoal::get_actor::<Counter>("no-such-name").unwrap_err(),
        ActorError::NotFound("no-such-name".into())
    );

    // A second program attached to the same node finds it by name and calls it, and
    // get-or-creates another.
    let out = second_program(shoal.socket(), &name);
    assert_eq!(out.trim(), "looked-up=1011 get-or-create=1021");
    assert_eq!(c.get().get_blocking().unwrap(), 1021);
}

/// Runs this test binary again as another driver program, attached to our node's socket.
fn second_program(socket: &std::path::Path, name: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "second_program_entry", "--nocapture", "--quiet"])
        .env("SHOAL_TEST_SECOND_PROGRAM", name)
        .env("SHOAL_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "second program failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .find(|l| l.starts_with("looked-up="))
        .unwrap_or_else(|| panic!("no result line in {stdout:?}"))
        .to_string()
}

/// The second program of `named_actors_from_a_second_program` (a no-op otherwise).
#[test]
fn second_program_entry() {
    let Ok(name) = std::env::var("SHOAL_TEST_SECOND_PROGRAM") else {
        return;
    };
    shoal::init_with(shoal::InitOptions {
        require_daemon: true,
        ..Default::default()
    })
    .unwrap();
    let c = shoal::get_actor::<Counter>(&name).unwrap();
    let a = c.incr(10).get_blocking().unwrap();
    let again = Counter::options(ActorOptions::new().name(&name).get_if_exists(true)).remote(0);
    let b = again.incr(10).get_blocking().unwrap();
    println!("looked-up={a} get-or-create={b}");
}

/// A 10 s call that has started running in the actor's process.
fn running_slow_call(c: &ActorHandle<Counter>, name: &str) -> ObjectRef<i64> {
    let marker = std::env::temp_dir().join(format!(
        "shoal-actor-test-{}-{name}.started",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&marker);
    let r = c.marked_slow_get(marker.display().to_string(), 10_000);
    wait_until(Duration::from_secs(30), || marker.exists());
    let _ = std::fs::remove_file(&marker);
    r
}

fn sigkill(pid: u32) {
    // SAFETY: sending a signal to a process of our own (an actor worker we started).
    let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}");
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie shows state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ref inside the result of a threaded actor's blocking method (encoded on a thread of its
/// pool) lives as long as that result, after the actor's process is gone: the node is told
/// the result holds it.
#[test]
fn a_ref_returned_by_a_threaded_actors_blocking_method_lives_with_the_result() {
    const WAIT: Duration = Duration::from_secs(60);
    let boxer = Boxer::options(ActorOptions::new().max_concurrency(2)).remote();
    let outer = boxer.boxed(7);
    // Made, not read: this process holds no ref to the inner value.
    let (ready, _) = shoal::wait_blocking(std::slice::from_ref(&outer), 1, Some(WAIT)).unwrap();
    assert_eq!(ready.len(), 1);
    shoal::kill(&boxer);
    // Its process (which made the inner value) ends with the actor.
    let deadline = Instant::now() + WAIT;
    while boxer.boxed(1).get_blocking_timeout(WAIT).is_ok() {
        assert!(Instant::now() < deadline, "the actor never ended");
    }
    let inner = outer.get_blocking_timeout(WAIT).unwrap();
    assert_eq!(inner.get_blocking_timeout(WAIT).unwrap(), 7);
}
