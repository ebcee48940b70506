//! A remote function, a put, a wait and an actor.
//!
//! Run with: `cargo run --release --example hello`
//!
//! With no `shoal node` running, `shoal::init()` starts a node inside this program; the
//! tasks still run in separate worker processes (this same executable, in worker mode).

use std::time::Duration;

/// Runs in a worker process.
#[shoal::remote]
fn greet(name: String) -> String {
    format!("hello, {name}, from process {}", std::process::id())
}

/// Sums a vector that may live in shared memory.
#[shoal::remote]
fn total(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

/// A stateful actor: lives in a worker process of its own.
pub struct Counter {
    n: u64,
}

#[shoal::actor]
impl Counter {
    pub fn new(start: u64) -> Self {
        Counter { n: start }
    }

    pub fn incr(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

#[shoal::remote]
async fn slow_square(x: u64, ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    x * x
}

fn main() -> anyhow::Result<()> {
    let shoal = shoal::init()?;
    println!(
        "driver {} attached to node {} ({})",
        std::process::id(),
        shoal.node_id(),
        if shoal.is_embedded() {
            "embedded"
        } else {
            "daemon"
        }
    );

    // A remote call returns at once; `get` waits for the result.
    let greeting = greet.remote("shoal");
    println!("{}", greeting.get_blocking()?);

    // A put stores a value; its reference is an argument like any other. One million u64s
    // are ~1 MB encoded: they go through the shared-memory store, not a socket.
    let numbers: Vec<u64> = (1..=1_000_000).collect();
    let numbers_ref = shoal::put(&numbers)?;
    let sum = total.remote(&numbers_ref);
    println!("sum of 1..=1000000 = {}", sum.get_blocking()?);
    anyhow::ensure!(sum.get_blocking()? == 500_000_500_000, "wrong sum");

    // Wait for the first two of four tasks of different lengths.
    let squares: Vec<_> = [400u64, 10, 20, 600]
        .iter()
        .enumerate()
        .map(|(i, ms)| slow_square.remote(i as u64, *ms))
        .collect();
    let (ready, pending) = shoal::wait_blocking(&squares, 2, Some(Duration::from_secs(30)))?;
    println!(
        "{} ready first, {} still running",
        ready.len(),
        pending.len()
    );
    for r in &ready {
        println!("  ready: {}", r.get_blocking()?);
    }
    let all: Vec<u64> = squares
        .iter()
        .map(|r| r.get_blocking())
        .collect::<Result<_, _>>()?;
    println!("all squares: {all:?}");
    anyhow::ensure!(all == vec![0, 1, 4, 9], "wrong squares");

    // An actor keeps state between calls; calls from one caller run in order.
    let counter = Counter::remote(10);
    let counts: Vec<_> = (0..3).map(|_| counter.incr(5)).collect();
    let last = counts.last().map(|r| r.get_blocking()).transpose()?;
    println!("counter after three calls: {last:?}");
    anyhow::ensure!(last == Some(25), "wrong count");
    Ok(())
}
