//! Streaming generators (Ray's `num_returns="streaming"`) on an embedded node: real worker
//! processes, real shared memory. (Across peers: `spill.rs`.)

use std::time::{Duration, Instant};

use shoal::{Bytes, GetError, ObjectId, Queue, QueueError, TaskError, TaskOptions};

/// Yields `n` items, tens; each after the first only once `gate` lets it.
#[shoal::remote(streaming)]
fn gated(gate: Queue<u8>, n: u64) -> impl Iterator<Item = u64> {
    (1..=n).map(move |i| {
        if i > 1 {
            gate.get_blocking(None).expect("the gate");
        }
        i * 10
    })
}

/// Yields `1..=n`, saying in `progress` which item it makes before it yields it.
#[shoal::remote(streaming)]
fn counted(progress: Queue<u32>, n: u32) -> impl Iterator<Item = u32> {
    (1..=n).inspect(move |i| progress.put_blocking(*i, None).expect("progress"))
}

/// Yields `1..=n`, then panics.
#[shoal::remote(streaming)]
fn fails_after(n: u64) -> impl Iterator<Item = u64> {
    (1..).inspect(move |i| assert!(*i <= n, "after {n}"))
}

/// `count` chunks of `size` bytes, chunk `i` all `i`: large ones go through the store.
#[shoal::remote(streaming)]
fn chunks(count: u8, size: u64) -> Vec<Bytes> {
    (0..count)
        .map(|i| Bytes::from(vec![i; size as usize]))
        .collect()
}

/// The sum of the bytes.
#[shoal::remote]
fn total(bytes: Bytes) -> u64 {
    bytes.iter().map(|b| u64::from(*b)).sum()
}

/// Keeps numbers; streams them back, blocking or `async`.
pub struct Keeper {
    numbers: Vec<u64>,
}

#[shoal::actor]
impl Keeper {
    pub fn new(numbers: Vec<u64>) -> Self {
        Keeper { numbers }
    }

    /// The numbers, each its own object, borrowed from the state as they are yielded.
    #[streaming]
    pub fn each(&self) -> impl Iterator<Item = u64> + '_ {
        self.numbers.iter().copied()
    }

    /// The numbers doubled, made by an `async` method.
    #[streaming]
    pub async fn doubled(&self) -> Vec<u64> {
        self.numbers.iter().map(|n| n * 2).collect()
    }

    /// One number added (a plain call, between streams).
    pub fn add(&mut self, n: u64) -> usize {
        self.numbers.push(n);
        self.numbers.len()
    }
}

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn an_actors_methods_stream_their_items_blocking_and_async() {
    let keeper = Keeper::remote(vec![1, 2, 3]);
    let got: Vec<u64> = keeper
        .each()
        .map(|r| r.get_blocking_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(keeper.add(4).get_blocking_timeout(WAIT).unwrap(), 4);
    // An `async` method's items, taken one at a time.
    let mut stream = keeper.doubled();
    let mut got = Vec::new();
    for r in stream.by_ref() {
        got.push(r.get_blocking_timeout(WAIT).unwrap());
    }
    assert_eq!(got, vec![2, 4, 6, 8]);
    assert_eq!(stream.taken(), 4);
}

#[test]
fn each_item_comes_as_soon_as_it_is_yielded_while_the_function_runs_on() {
    let gate: Queue<u8> = Queue::new(0);
    let mut stream = gated.remote(gate.clone(), 3);
    // The function now waits at the gate before its second item: the first is here.
    let first = stream.next().expect("a first item");
    assert_eq!(first.get_blocking_timeout(WAIT).unwrap(), 10);
    assert!(!stream.is_finished());
    for want in [20, 30] {
        gate.put_blocking(1, None).unwrap();
        let r = stream.next().expect("another item");
        assert_eq!(r.get_blocking_timeout(WAIT).unwrap(), want);
    }
    assert!(stream.next().is_none());
    assert!(stream.is_finished());
    assert_eq!(stream.taken(), 3);
    // Each item is its own object, numbered from 1.
    assert_eq!(first.id(), ObjectId::for_return(stream.task_id(), 1));
}

#[test]
fn a_generator_pauses_while_its_consumer_is_a_window_behind() {
    let progress: Queue<u32> = Queue::new(0);
    let mut stream = counted
        .options(TaskOptions::new().backpressure(2))
        .remote(progress.clone(), 10);
    let made = |timeout| progress.get_blocking(Some(timeout));
    assert_eq!(made(WAIT), Ok(1));
    assert_eq!(made(WAIT), Ok(2));
    // Nothing taken: it does not ask its iterator for a third.
    assert!(matches!(
        made(Duration::from_millis(300)),
        Err(QueueError::Empty)
    ));
    // One taken: one more.
    let one = stream.next().unwrap();
    assert_eq!(one.get_blocking_timeout(WAIT).unwrap(), 1);
    assert_eq!(made(WAIT), Ok(3));
    // Dropped unfinished, the stream cancels its task: the items it did not give out are
    // released (and the worker is free: the next task runs).
    let ids: Vec<_> = (2..=3)
        .map(|i| ObjectId::for_return(stream.task_id(), i))
        .collect();
    drop(stream);
    let shoal = shoal::init().unwrap();
    let deadline = Instant::now() + WAIT;
    while shoal.objects().unwrap().iter().any(|o| ids.contains(&o.id)) {
        assert!(Instant::now() < deadline, "items never released");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        one.get_blocking_timeout(WAIT).unwrap(),
        1,
        "a taken item lives on"
    );
}

#[test]
fn a_failure_ends_the_stream_with_a_ref_that_gives_the_error() {
    let mut stream = fails_after.remote(2);
    for want in [1, 2] {
        let r = stream.next().expect("an item before the failure");
        assert_eq!(r.get_blocking_timeout(WAIT).unwrap(), want);
    }
    let failed = stream.next().expect("the failure");
    match failed.get_blocking_timeout(WAIT) {
        Err(GetError::Task(TaskError::Panicked { message, .. })) => {
            assert_eq!(message, "after 2")
        }
        other => panic!("expected the panic, got {other:?}"),
    }
    assert!(stream.next().is_none());
}

#[test]
fn large_items_go_through_the_store_and_are_passed_on_and_awaited() {
    let size = 4 << 20;
    let stream = chunks.remote(4, size);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sums = rt.block_on(async move {
        let mut stream = stream;
        let mut sums = Vec::new();
        while let Some(r) = stream.recv().await {
            // Passed on to another task, and read here.
            let sum = total.remote(&r).await.unwrap();
            let bytes = r.await.unwrap();
            assert_eq!(bytes.len() as u64, size);
            sums.push(sum);
        }
        sums
    });
    let want: Vec<u64> = (0..4).map(|i| i * size).collect();
    assert_eq!(sums, want);
}
