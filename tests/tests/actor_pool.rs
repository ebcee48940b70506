//! `ActorPool` (Ray's `ray.util.ActorPool`, issue 14) on an embedded node with real actor
//! processes: results in the order submitted or as they end, calls waiting for a free actor,
//! failures in their place, and actors taken out and put back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal::{ActorHandle, ActorPool, GetError, TaskError};

pub struct Squarer {
    id: u32,
}

#[shoal::actor]
impl Squarer {
    pub fn new(id: u32) -> Self {
        Squarer { id }
    }

    /// The actor that ran the call, and the square.
    pub fn square(&self, x: u64) -> (u32, u64) {
        (self.id, x * x)
    }

    /// `square`, but `refused` panics.
    pub fn square_but(&self, x: u64, refused: u64) -> (u32, u64) {
        assert!(x != refused, "{refused} is refused");
        (self.id, x * x)
    }

    /// `square`, once `gate` is ready (the call is made at once, and waits at the node).
    pub fn square_after(&self, x: u64, _gate: ()) -> (u32, u64) {
        (self.id, x * x)
    }
}

/// A gate: calls of `wait` end once `open` was called.
#[derive(Default)]
pub struct Gate {
    opened: AtomicBool,
    open: tokio::sync::Notify,
}

#[shoal::actor]
impl Gate {
    pub fn new() -> Self {
        Gate::default()
    }

    pub async fn wait(&self) {
        while !self.opened.load(Ordering::SeqCst) {
            let woken = self.open.notified();
            if self.opened.load(Ordering::SeqCst) {
                break;
            }
            woken.await;
        }
    }

    pub async fn open(&self) {
        self.opened.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }
}

fn squarers(n: u32) -> Vec<ActorHandle<Squarer>> {
    (0..n).map(Squarer::remote).collect()
}

#[test]
fn map_gives_results_in_order_using_every_actor() {
    shoal::init().unwrap();
    let mut pool = ActorPool::new(squarers(3));
    let values: Vec<u64> = (10..40).collect();
    let results: Vec<(u32, u64)> = pool
        .map_blocking(|a, x| a.square(x), values.clone())
        .collect::<Result<_, _>>()
        .unwrap();
    let squares: Vec<u64> = results.iter().map(|(_, s)| *s).collect();
    assert_eq!(squares, values.iter().map(|x| x * x).collect::<Vec<_>>());
    // 30 calls on 3 actors that each run one at a time: all of them worked.
    let ran: BTreeSet<u32> = results.iter().map(|(id, _)| *id).collect();
    assert_eq!(ran, BTreeSet::from([0, 1, 2]));
    assert!(!pool.has_next());
    assert!(pool.has_free());
}

#[test]
fn unordered_results_come_as_calls_end_while_one_actor_is_held() {
    shoal::init().unwrap();
    let gate = Gate::remote();
    let mut pool = ActorPool::new(squarers(3));
    let held = gate.wait();
    pool.submit(move |a| a.square_after(0, held));
    for x in 1..10u64 {
        pool.submit(move |a| a.square(x));
    }
    // Calls wait for a free actor: three actors, ten calls.
    assert!(!pool.has_free());
    // The held call cannot end before the gate opens, so the other nine end first, on the
    // two actors left.
    let mut first: Vec<(u32, u64)> = (0..9)
        .map(|_| pool.get_next_unordered_blocking().unwrap().unwrap())
        .collect();
    assert!(
        first.iter().all(|(_, s)| *s != 0),
        "the held call ended: {first:?}"
    );
    let held_on = {
        let ran: BTreeSet<u32> = first.iter().map(|(id, _)| *id).collect();
        assert_eq!(ran.len(), 2, "{first:?}");
        (0..3).find(|id| !ran.contains(id)).unwrap()
    };
    first.sort_by_key(|(_, s)| *s);
    let squares: Vec<u64> = first.iter().map(|(_, s)| *s).collect();
    assert_eq!(squares, (1..10u64).map(|x| x * x).collect::<Vec<_>>());
    assert!(pool.has_next());
    gate.open().get_blocking().unwrap();
    assert_eq!(pool.get_next_unordered_blocking(), Some(Ok((held_on, 0))));
    assert_eq!(pool.get_next_unordered_blocking(), None);
}

#[test]
fn a_failed_call_gives_its_error_in_its_place_and_its_actor_stays() {
    shoal::init().unwrap();
    let mut pool = ActorPool::new(squarers(2));
    let results: Vec<Result<(u32, u64), GetError>> = pool
        .map_blocking(|a, x| a.square_but(x, 5), 0..8u64)
        .collect();
    assert_eq!(results.len(), 8);
    for (x, r) in results.iter().enumerate() {
        match r {
            Ok((_, s)) => assert_eq!(*s, (x * x) as u64),
            Err(GetError::Task(TaskError::Panicked { message, .. })) => {
                assert_eq!(x, 5);
                assert!(message.contains("5 is refused"), "{message}");
            }
            Err(e) => panic!("{x}: {e}"),
        }
    }
    assert!(results[5].is_err());
    // Both actors are back, and can be taken out and put back.
    let a = pool.pop_idle().unwrap();
    let b = pool.pop_idle().unwrap();
    assert!(pool.pop_idle().is_none());
    pool.submit(|a| a.square(3));
    assert!(pool.has_next());
    pool.push(b);
    assert_eq!(
        pool.get_next_blocking().map(|r| r.map(|(_, s)| s)),
        Some(Ok(9))
    );
    pool.push(a);
    assert!(pool.get_next_blocking().is_none());
}

#[test]
fn results_are_awaited_under_an_async_runtime() {
    shoal::init().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut pool = ActorPool::new(squarers(2));
    for x in 0..6u64 {
        pool.submit(move |a| a.square(x));
    }
    let got = runtime.block_on(async {
        let mut got = Vec::new();
        while let Some(r) = pool.get_next().await {
            got.push(r.unwrap().1);
        }
        got
    });
    assert_eq!(got, vec![0, 1, 4, 9, 16, 25]);
    for x in 0..4u64 {
        pool.submit(move |a| a.square(x + 10));
    }
    let mut got = runtime.block_on(async {
        let mut got = Vec::new();
        while let Some(r) = pool.get_next_unordered().await {
            got.push(r.unwrap().1);
        }
        got
    });
    got.sort_unstable();
    assert_eq!(got, vec![100, 121, 144, 169]);
}
