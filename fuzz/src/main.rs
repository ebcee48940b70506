//! `shoal-fuzz`: fuzz Shoal's decoders on stable. Run with
//! `cargo run --release -p shoal-fuzz -- --seconds 5 [TARGET...]`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use shoal_fuzz::runner::{self, Budget, Options};
use shoal_fuzz::{targets, Verdict};

const USAGE: &str = "\
usage: shoal-fuzz [--seconds S | --iterations N] [--seed S] [--crashes DIR] [--hang S] [TARGET...]
       shoal-fuzz --replay FILE TARGET
       shoal-fuzz --list

Fuzzes every target (or those named) for S seconds each (default 5) or N inputs each.
A crash (a panic, an allocation above 64 x input + 4 MiB, or an input running longer than
--hang seconds, default 10) is written to DIR/<target>-<hash> (default fuzz/crashes) and
the run exits non-zero. The seed (default 1) makes a run repeatable.";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        budget: Budget::Time(Duration::from_secs(5)),
        seed: 1,
        crash_dir: runner::crate_dir().join("crashes"),
        hang: Duration::from_secs(10),
    };
    let mut names = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--seconds" => {
                let s: f64 = value("a number of seconds")?.parse()?;
                opts.budget = Budget::Time(Duration::try_from_secs_f64(s)?);
            }
            "--iterations" => opts.budget = Budget::Iterations(value("a count")?.parse()?),
            "--seed" => opts.seed = value("a number")?.parse()?,
            "--crashes" => opts.crash_dir = PathBuf::from(value("a directory")?),
            "--hang" => opts.hang = Duration::try_from_secs_f64(value("seconds")?.parse()?)?,
            "--replay" => {
                let file = PathBuf::from(value("a file")?);
                let name = value("a target")?;
                return replay(&file, &name);
            }
            "--list" => {
                for t in targets::all() {
                    println!("{:16} {}", t.name, t.about);
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other if other.starts_with('-') => bail!("unknown option {other}\n{USAGE}"),
            name => names.push(name.to_string()),
        }
    }
    let mut chosen = Vec::new();
    for t in targets::all() {
        if names.is_empty() || names.iter().any(|n| n == t.name) {
            chosen.push(t);
        }
    }
    for n in &names {
        if !chosen.iter().any(|t| t.name == n) {
            bail!("no target {n} (--list shows them)");
        }
    }
    println!(
        "shoal-fuzz: {} targets, {:?} each, seed {}",
        chosen.len(),
        opts.budget,
        opts.seed
    );
    let mut crashed = Vec::new();
    let (mut total, mut time) = (0u64, Duration::ZERO);
    for t in &chosen {
        let extra = runner::regressions(t.name)
            .with_context(|| format!("reading the regressions of {}", t.name))?
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect();
        let stats = runner::fuzz(t, &opts, extra);
        total += stats.iterations;
        time += stats.elapsed;
        let secs = stats.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:16} {:>10} inputs {:>6.1} s {:>9.0}/s  {:>3.0}% accepted  corpus {:>4}  peak {} B (input {} B)",
            t.name,
            stats.iterations,
            secs,
            stats.iterations as f64 / secs,
            100.0 * stats.accepted as f64 / stats.iterations.max(1) as f64,
            stats.corpus,
            stats.peak_alloc.0,
            stats.peak_alloc.1,
        );
        if let Some(crash) = &stats.crash {
            runner::report_crash(t.name, crash);
            crashed.push(t.name);
        }
    }
    println!("shoal-fuzz: {total} inputs in {:.1} s", time.as_secs_f64());
    if !crashed.is_empty() {
        eprintln!("shoal-fuzz: crashes in {}", crashed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}

fn replay(file: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let target = targets::find(name).with_context(|| format!("no target {name}"))?;
    let input = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match runner::run_one(&target, &input, false) {
        Ok(Verdict::Accepted) => println!("{name}: accepted ({} bytes), no crash", input.len()),
        Ok(Verdict::Rejected) => println!("{name}: rejected ({} bytes), no crash", input.len()),
        Err(reason) => {
            eprintln!("{name}: {reason}");
            std::process::exit(1);
        }
    }
    Ok(())
}
