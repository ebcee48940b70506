//! Fan out 1,000 small tasks and print how many per second ran.
//!
//! Run with: `cargo run --release --example fanout [-- N]`

use std::time::Instant;

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    shoal::init()?;
    // Warm up: start the workers.
    square.remote(0).get_blocking()?;
    for round in 1..=3 {
        let start = Instant::now();
        let refs: Vec<_> = (0..n).map(|i| square.remote(i)).collect();
        let mut sum = 0u64;
        for r in &refs {
            sum += r.get_blocking()?;
        }
        let secs = start.elapsed().as_secs_f64();
        let expected: u64 = (0..n).map(|i| i * i).sum();
        anyhow::ensure!(sum == expected, "wrong sum {sum}, expected {expected}");
        println!(
            "round {round}: {n} tasks in {:.3} s: {:.0} tasks/s",
            secs,
            n as f64 / secs
        );
    }
    Ok(())
}
