//! Getting many refs at once and awaiting refs, with Ray's semantics (issue 14), on an
//! embedded node: `get_all` returns every value in order, fails as soon as one ref fails
//! (not waiting for slower ones), and times out; an `ObjectRef` (or a reference to one) is
//! awaited directly.

use std::time::{Duration, Instant};

use shoal::{GetError, TaskError};

const LIMIT: Duration = Duration::from_secs(60);

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[shoal::remote]
fn fails() -> u64 {
    panic!("on purpose")
}

/// Runs until cancelled (a minute at most).
#[shoal::remote]
fn slow() -> u64 {
    let end = Instant::now() + LIMIT;
    while Instant::now() < end && !shoal::is_cancelled() {
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn get_all_returns_every_value_in_order() {
    shoal::init().unwrap();
    let refs: Vec<_> = (0..50).map(|i| square.remote(i)).collect();
    let want: Vec<u64> = (0..50).map(|i| i * i).collect();
    assert_eq!(
        shoal::get_all_blocking(&refs, Some(LIMIT)),
        Ok(want.clone())
    );
    let got = runtime().block_on(shoal::get_all(&refs, None));
    assert_eq!(got, Ok(want));
    assert_eq!(shoal::get_all_blocking::<u64>(&[], None), Ok(vec![]));
}

#[test]
fn get_all_fails_fast_on_the_first_failure_and_times_out() {
    shoal::init().unwrap();
    for asynchronous in [false, true] {
        // A shape of its own: the node queues short tasks of one shape at a worker behind
        // one another, and the failing one must not wait behind this one.
        let pending = slow
            .options(shoal::TaskOptions::new().num_cpus(0.5))
            .remote();
        let refs = vec![pending.clone(), fails.remote(), square.remote(3)];
        let t0 = Instant::now();
        let got = if asynchronous {
            runtime().block_on(shoal::get_all(&refs, None))
        } else {
            shoal::get_all_blocking(&refs, None)
        };
        match got {
            Err(GetError::Task(TaskError::Panicked { message, .. })) => {
                assert!(message.contains("on purpose"), "{message}")
            }
            other => panic!("async {asynchronous}: expected the panic, got {other:?}"),
        }
        assert!(t0.elapsed() < LIMIT / 2, "it did not wait for the slow one");
        assert!(!pending.is_ready(), "the slow one still runs");
        // And a deadline that passes first.
        let just_slow = [pending.clone()];
        let timeout = Duration::from_millis(100);
        let got = if asynchronous {
            runtime().block_on(shoal::get_all(&just_slow, Some(timeout)))
        } else {
            shoal::get_all_blocking(&just_slow, Some(timeout))
        };
        assert_eq!(got, Err(GetError::Timeout(timeout)));
        shoal::cancel(&pending).unwrap();
    }
}

#[test]
fn a_ref_is_awaited_directly() {
    shoal::init().unwrap();
    runtime().block_on(async {
        assert_eq!(square.remote(3).await, Ok(9));
        let r = square.remote(4);
        assert_eq!((&r).await, Ok(16));
        assert_eq!(r.await, Ok(16), "the ref was kept by the first await");
        match fails.remote().await {
            Err(GetError::Task(TaskError::Panicked { .. })) => {}
            other => panic!("expected the panic, got {other:?}"),
        }
    });
}
