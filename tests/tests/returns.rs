//! Tasks with several returns (Ray's `num_returns`) on an embedded node: real worker
//! processes, real shared memory.

use std::time::Duration;

use shoal::{Bytes, GetError, ObjectRef, TaskError, TaskOptions};

/// A number, its name, and `n` bytes of it: three objects.
#[shoal::remote(num_returns = 3)]
fn describe(x: u8, n: u64) -> (u64, String, Bytes) {
    (
        u64::from(x),
        format!("number {x}"),
        Bytes::from(vec![x; n as usize]),
    )
}

/// The sum of the bytes.
#[shoal::remote]
fn total(bytes: Bytes) -> u64 {
    bytes.iter().map(|b| u64::from(*b)).sum()
}

/// Fails before returning either.
#[shoal::remote(num_returns = 2)]
fn fails_both(message: String) -> (u8, u8) {
    panic!("{message}")
}

/// A ref made inside the task, returned as the second of two.
#[shoal::remote(num_returns = 2)]
fn with_inner(x: u64) -> (u64, ObjectRef<u64>) {
    (x, shoal::put(&(x * 10)).expect("put"))
}

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn each_element_is_its_own_object_read_passed_and_freed_on_its_own() {
    // 4 MiB: the third return goes through the store, the others inline.
    let n = 4 << 20;
    let (x, name, bytes) = describe.remote(7, n);
    assert_ne!(x.id(), name.id());
    assert_ne!(name.id(), bytes.id());
    assert_eq!(name.get_blocking_timeout(WAIT).unwrap(), "number 7");
    // One element passed on to another task, alone.
    assert_eq!(
        total.remote(&bytes).get_blocking_timeout(WAIT).unwrap(),
        7 * n
    );
    let read = bytes.get_blocking_timeout(WAIT).unwrap();
    assert_eq!(read.len() as u64, n);
    assert!(read.iter().all(|b| *b == 7));
    // Dropped first, the large one is freed while the others stay readable.
    let big = bytes.id();
    drop(read);
    drop(bytes);
    let deadline = std::time::Instant::now() + WAIT;
    let shoal = shoal::init().unwrap();
    while shoal.objects().unwrap().iter().any(|o| o.id == big) {
        assert!(std::time::Instant::now() < deadline, "never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(x.get_blocking_timeout(WAIT).unwrap(), 7);
    assert_eq!(name.get_blocking_timeout(WAIT).unwrap(), "number 7");
    // With options too.
    let (x, _, bytes) = describe
        .options(TaskOptions::new().max_retries(0))
        .remote(2, 10);
    assert_eq!(x.get_blocking_timeout(WAIT).unwrap(), 2);
    assert_eq!(bytes.get_blocking_timeout(WAIT).unwrap().len(), 10);
}

#[test]
fn a_failure_fails_every_return_with_the_same_error() {
    let (a, b) = fails_both.remote("both".to_string());
    for r in [a, b] {
        match r.get_blocking_timeout(WAIT) {
            Err(GetError::Task(TaskError::Panicked { message, .. })) => {
                assert_eq!(message, "both")
            }
            other => panic!("expected the panic, got {other:?}"),
        }
    }
    // Reading only the second fails with it too.
    let (_, b) = fails_both.remote("second".to_string());
    assert!(matches!(
        b.get_blocking_timeout(WAIT),
        Err(GetError::Task(TaskError::Panicked { .. }))
    ));
}

#[test]
fn a_ref_inside_one_return_lives_as_long_as_that_return() {
    let (x, inner) = with_inner.remote(4);
    drop(x);
    let inner = inner.get_blocking_timeout(WAIT).unwrap();
    assert_eq!(inner.get_blocking_timeout(WAIT).unwrap(), 40);
}

/// An actor whose methods give several objects (Ray's `@ray.method(num_returns=n)`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Splitter {
    calls: u64,
}

#[shoal::actor]
impl Splitter {
    pub fn new() -> Self {
        Splitter { calls: 0 }
    }

    /// The call's number, its name, and `n` bytes of it.
    #[num_returns = 3]
    pub fn split(&mut self, n: u64) -> (u64, String, Bytes) {
        self.calls += 1;
        let x = self.calls;
        (
            x,
            format!("call {x}"),
            Bytes::from(vec![x as u8; n as usize]),
        )
    }

    /// The same, after a wait: its elements are encoded when it ends, while other calls
    /// of the actor run.
    #[num_returns = 2]
    pub async fn later(&self, ms: u64, x: u64) -> (u64, ObjectRef<u64>) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        (x, shoal::put(&(x * 10)).expect("put"))
    }

    /// Fails before returning either.
    #[num_returns = 2]
    pub fn fails(&self) -> (u8, Self) {
        panic!("no split")
    }
}

#[test]
fn an_actor_method_gives_each_element_its_own_object() {
    let s = Splitter::remote();
    // 4 MiB: the third element goes through the store, the others inline.
    let n = 4 << 20;
    let (x, name, bytes) = s.split(n);
    let (x2, name2, small) = s.split(3);
    assert_ne!(x.id(), name.id());
    assert_eq!(name2.get_blocking_timeout(WAIT).unwrap(), "call 2");
    assert_eq!(x2.get_blocking_timeout(WAIT).unwrap(), 2);
    assert_eq!(small.get_blocking_timeout(WAIT).unwrap().0, vec![2; 3]);
    // One element passed on to a task, alone.
    assert_eq!(total.remote(&bytes).get_blocking_timeout(WAIT).unwrap(), n);
    assert_eq!(x.get_blocking_timeout(WAIT).unwrap(), 1);
    assert_eq!(name.get_blocking_timeout(WAIT).unwrap(), "call 1");
    // Async ones, interleaved: each call's elements are its own.
    let slow = s.later(300, 1);
    let fast = s.later(0, 2);
    let (b, b_inner) = fast;
    assert_eq!(b.get_blocking_timeout(WAIT).unwrap(), 2);
    let (a, a_inner) = slow;
    assert_eq!(a.get_blocking_timeout(WAIT).unwrap(), 1);
    let a_inner = a_inner.get_blocking_timeout(WAIT).unwrap();
    assert_eq!(a_inner.get_blocking_timeout(WAIT).unwrap(), 10);
    let b_inner = b_inner.get_blocking_timeout(WAIT).unwrap();
    assert_eq!(b_inner.get_blocking_timeout(WAIT).unwrap(), 20);
    // A panic fails each, and the actor goes on.
    let (p, q) = s.fails();
    for r in [
        p.get_blocking_timeout(WAIT).map(drop),
        q.get_blocking_timeout(WAIT).map(drop),
    ] {
        match r {
            Err(GetError::Task(TaskError::Panicked { message, .. })) => {
                assert_eq!(message, "no split")
            }
            other => panic!("expected the panic, got {other:?}"),
        }
    }
    let (x3, _, _) = s.split(1);
    assert_eq!(x3.get_blocking_timeout(WAIT).unwrap(), 3);
}

/// A threaded actor: its blocking methods run on a pool of threads.
struct Pair;

#[shoal::actor(threaded)]
impl Pair {
    pub fn new() -> Self {
        Pair
    }

    #[num_returns = 2]
    pub fn halves(&self, x: u64, ms: u64) -> (u64, u64) {
        std::thread::sleep(Duration::from_millis(ms));
        (x / 2, x - x / 2)
    }
}

#[test]
fn a_threaded_actors_blocking_method_gives_each_element_its_own_object() {
    let p = Pair::options(shoal::ActorOptions::new().max_concurrency(2)).remote();
    // The slow call's elements are taken on its own thread, not mixed with the fast one's.
    let (a, b) = p.halves(9, 300);
    let (c, d) = p.halves(100, 0);
    assert_eq!(c.get_blocking_timeout(WAIT).unwrap(), 50);
    assert_eq!(d.get_blocking_timeout(WAIT).unwrap(), 50);
    assert_eq!(b.get_blocking_timeout(WAIT).unwrap(), 5);
    assert_eq!(a.get_blocking_timeout(WAIT).unwrap(), 4);
}
