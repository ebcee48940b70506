//! Make many small calls to one actor, then get them all (the work of BENCH.md's
//! `1_1_actor_calls_async`, a fixed number of times): a fixed amount of work to profile.
//!
//! Run with: `cargo run --release --example actor_calls [-- N [ROUNDS]]` (default 1,000 calls
//! per round, 3 rounds). Under callgrind, the driver and its embedded node are traced and the
//! actor's worker process is not: `valgrind --tool=callgrind --trace-children=no
//! target/release/examples/actor_calls 1000 20`.

use std::time::Instant;

/// Answers each call with two bytes.
#[derive(Default)]
pub struct Target;

#[shoal::actor]
impl Target {
    /// The actor.
    pub fn new() -> Self {
        Target
    }

    /// A small call: returns `b"ok"`.
    pub fn small(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let rounds: u32 = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    shoal::init()?;
    let target = Target::remote();
    // Warm up: start the actor's worker.
    anyhow::ensure!(target.small().get_blocking()? == b"ok", "a wrong answer");
    for round in 1..=rounds {
        let start = Instant::now();
        let refs: Vec<_> = (0..n).map(|_| target.small()).collect();
        for r in &refs {
            anyhow::ensure!(r.get_blocking()? == b"ok", "a wrong answer");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "round {round}: {n} actor calls in {:.3} s: {:.0} calls/s",
            secs,
            n as f64 / secs
        );
    }
    Ok(())
}
