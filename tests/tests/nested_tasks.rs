//! Tasks that wait for tasks they submitted, more of them than the node's worker pool holds:
//! a task blocked in a `get` lends its worker's place in the pool as it lends its CPU (as in
//! Ray), so its children get workers. An embedded node of one CPU, whose pool holds 8
//! workers.

use std::time::Duration;

use shoal::InitOptions;

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Submits `n` children and waits for them all.
#[shoal::remote]
fn sum_of_squares(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(|i| square.remote(i)).collect();
    refs.iter()
        .map(|r| r.get_blocking().expect("child task"))
        .sum()
}

#[test]
fn more_waiting_parents_than_the_pool_holds_still_finish() {
    let shoal = shoal::init_with(InitOptions {
        force_embedded: true,
        cpus: Some(1.0),
        ..Default::default()
    })
    .unwrap();
    // One CPU: a pool of 8 workers. Twelve parents blocked at once would hold every place
    // if blocked workers counted, and their children would never start.
    let parents: Vec<_> = (0..12).map(|_| sum_of_squares.remote(5)).collect();
    for (i, p) in parents.iter().enumerate() {
        assert_eq!(
            p.get_blocking_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("parent {i}: {e}")),
            30
        );
    }
    // The pool grew past its cap while the parents waited; it shrinks back as they end.
    let status = shoal.status().unwrap();
    let pool = status.workers.iter().filter(|w| w.state != "actor").count();
    assert!(
        pool <= 8,
        "the pool is back within its cap: {:?}",
        status.workers
    );
}
