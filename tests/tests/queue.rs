//! `Queue` (Ray's `ray.util.queue.Queue`, issue 14) on an embedded node: an actor holds the
//! items, tasks and the program share it, in order, bounded, with waits that end on a put
//! or a get, and items that keep the refs inside them alive.

use std::time::Duration;

use shoal::{ActorOptions, ObjectRef, Queue, QueueError};

const LIMIT: Duration = Duration::from_secs(60);

#[shoal::remote]
fn produce(q: Queue<u64>, n: u64) -> u64 {
    for i in 0..n {
        q.put_blocking(i, Some(LIMIT)).unwrap();
    }
    n
}

#[shoal::remote]
fn consume_one(q: Queue<u64>) -> u64 {
    q.get_blocking(Some(LIMIT)).unwrap()
}

#[test]
fn items_come_out_in_order_across_processes() {
    shoal::init().unwrap();
    let q = Queue::<u64>::new(0);
    let produced = produce.remote(q.clone(), 50);
    let got: Vec<u64> = (0..50)
        .map(|_| q.get_blocking(Some(LIMIT)).unwrap())
        .collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert_eq!(produced.get_blocking().unwrap(), 50);
    assert!(q.is_empty().unwrap());
    q.shutdown();
}

#[test]
fn a_bounded_queue_refuses_when_full_and_empty_when_empty() {
    shoal::init().unwrap();
    let q = Queue::<String>::new(2);
    assert_eq!(q.get_nowait(), Err(QueueError::Empty));
    assert_eq!(
        q.get_blocking(Some(Duration::from_millis(50))),
        Err(QueueError::Empty)
    );
    q.put_nowait("a".into()).unwrap();
    q.put_nowait("b".into()).unwrap();
    assert!(q.is_full().unwrap());
    assert_eq!(q.put_nowait("c".into()), Err(QueueError::Full));
    assert_eq!(
        q.put_blocking("c".into(), Some(Duration::from_millis(50))),
        Err(QueueError::Full)
    );
    assert_eq!(q.len().unwrap(), 2);
    // A batch goes in whole or not at all; so does a batch out.
    assert_eq!(q.get_nowait_batch(3), Err(QueueError::Empty));
    assert_eq!(q.get_nowait_batch(2).unwrap(), vec!["a", "b"]);
    assert_eq!(
        q.put_nowait_batch(["x", "y", "z"].map(String::from)),
        Err(QueueError::Full)
    );
    assert!(q.is_empty().unwrap());
    q.put_nowait_batch(["x", "y"].map(String::from)).unwrap();
    assert_eq!(q.get_nowait().unwrap(), "x");
    q.shutdown();
}

#[test]
fn a_waiting_get_ends_with_the_next_put_and_a_waiting_put_with_the_next_get() {
    shoal::init().unwrap();
    let q = Queue::<u64>::new(1);
    // A task gets (waiting, if its get comes first) what the program puts.
    let consumer = consume_one.remote(q.clone());
    q.put_blocking(7, Some(LIMIT)).unwrap();
    assert_eq!(consumer.get_blocking_timeout(LIMIT).unwrap(), 7);
    // A task's puts wait for room (the queue is full) until the program gets.
    q.put_nowait(1).unwrap();
    let producer = produce.remote(q.clone(), 3);
    let got: Vec<u64> = (0..4)
        .map(|_| q.get_blocking(Some(LIMIT)).unwrap())
        .collect();
    assert_eq!(got, vec![1, 0, 1, 2]);
    assert_eq!(producer.get_blocking().unwrap(), 3);
    q.shutdown();
}

#[test]
fn an_item_keeps_the_objects_it_refers_to() {
    shoal::init().unwrap();
    let q = Queue::<Vec<ObjectRef<Vec<u8>>>>::new(0);
    let big = vec![5u8; 1 << 20];
    let r = shoal::put(&big).unwrap();
    q.put_blocking(vec![r], None).unwrap();
    // Only the queued item refers to the object now.
    let refs = q.get_blocking(None).unwrap();
    assert_eq!(refs[0].get_blocking().unwrap(), big);
    q.shutdown();
}

#[test]
fn async_puts_and_gets_and_a_named_queue() {
    shoal::init().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let q = Queue::<u32>::with_options(0, ActorOptions::new().name("jobs")).unwrap();
    let other = Queue::<u32>::named("jobs").unwrap();
    runtime.block_on(async {
        for i in 0..5 {
            q.put(i, None).await.unwrap();
        }
        for i in 0..5 {
            assert_eq!(other.get(Some(LIMIT)).await.unwrap(), i);
        }
        assert_eq!(
            other.get(Some(Duration::from_millis(20))).await,
            Err(QueueError::Empty)
        );
    });
    q.shutdown();
    assert!(matches!(other.put_nowait(1), Err(QueueError::Actor(_))));
}
