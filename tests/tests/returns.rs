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
