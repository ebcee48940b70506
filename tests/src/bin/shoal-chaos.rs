//! `shoal-chaos`: the chaos soak of issue 12, behind `scripts/chaos` (needs root).
//!
//! ```text
//! shoal-chaos [--nodes 5] [--minutes M] [--seed S] [--bound SECS] [--kinds kill,freeze,...]
//!             [--tolerate KIND,...] [--tolerate-lookup-hangs] [--window N]
//! ```
//!
//! Starts a network lab of `--nodes` nodes, three workload drivers (the `chaos_driver`
//! example, found beside this binary in `examples/`, or at `$SHOAL_CHAOS_DRIVER`) attached to
//! nodes 0, 1 and 2, injects faults at random from the seed (printed; from the clock if not
//! given) for `--minutes`, then heals everything, collects the drivers' counts, stops the
//! nodes and looks for leaks (see `shoal_tests::chaos`). Prints one JSON summary on stdout
//! and exits 1 if an invariant failed (no wrong result, no hang, no leak, only allowed
//! errors), 2 if the soak could not run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use shoal_tests::chaos::{self, ChaosOptions, FAULT_KINDS};
use shoal_tests::netlab::unavailable;

#[derive(Parser, Debug)]
#[command(
    name = "shoal-chaos",
    about = "A chaos soak: a mixed workload on a network lab while nodes are killed, frozen, \
             restarted, isolated and partitioned at random"
)]
struct Cli {
    /// How many nodes (at least 3).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How long the workload runs and faults are injected, in minutes.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// The seed of the faults and workloads [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds a reference may stay unresolved after its submission before it is a hang.
    #[arg(long, default_value_t = 120)]
    bound: u64,
    /// The fault kinds to draw from, comma-separated [default: all of kill, restart, freeze,
    /// isolate, partition].
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Failure kinds to tolerate as known bugs, comma-separated (reported apart).
    #[arg(long, value_delimiter = ',')]
    tolerate: Vec<String>,
    /// Tolerate lookups of named actors unanswered past their bound (a known bug).
    #[arg(long)]
    tolerate_lookup_hangs: bool,
    /// Pieces of work in flight per driver.
    #[arg(long, default_value_t = 12)]
    window: usize,
}

fn driver_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_CHAOS_DRIVER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    shoal_tests::example_bin("chaos_driver")
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(passed) => std::process::exit(if passed { 0 } else { 1 }),
        Err(e) => {
            eprintln!("shoal-chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    let seed = cli.seed.unwrap_or_else(chaos::seed_from_time);
    let mut options = ChaosOptions::new(
        cli.nodes,
        Duration::from_secs_f64(cli.minutes * 60.0),
        seed,
        driver_bin()?,
    );
    options.bound = Duration::from_secs(cli.bound);
    options.window = cli.window;
    options.tolerated = cli.tolerate;
    options.tolerate_lookup_hangs = cli.tolerate_lookup_hangs;
    if !cli.kinds.is_empty() {
        options.kinds = cli
            .kinds
            .iter()
            .map(|k| {
                FAULT_KINDS
                    .iter()
                    .copied()
                    .find(|f| f == k)
                    .with_context(|| format!("no fault kind {k} (kinds: {FAULT_KINDS:?})"))
            })
            .collect::<Result<_>>()?;
    }
    eprintln!("shoal-chaos: seed {seed} (run it again with --seed {seed})");
    let summary = chaos::run(&options)?;
    println!("{}", serde_json::to_string(&summary)?);
    for v in &summary.violations {
        eprintln!("shoal-chaos: VIOLATION: {v}");
    }
    Ok(summary.passed())
}
