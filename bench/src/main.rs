//! `shoal-bench [--quick] [--list] [NAME...]`: runs the named benchmark rows (all when none
//! is named) and prints one JSON object per row on stdout, as BENCH.md specifies. Progress
//! goes to stderr.
//!
//! Exit status: 0 when every row succeeded, 1 when one failed (the others still run), 2 for
//! a usage error (an unknown option or row name).

use std::ffi::OsString;
use std::process::ExitCode;

use shoal_bench::harness::{Bench, Method, Registry};

const USAGE: &str = "\
usage: shoal-bench [--quick] [--metrics | --metrics-compare] [--list] [NAME...]

Runs the named benchmark rows (all when none is named) and prints one JSON object per row
on stdout: {\"name\":...,\"value\":...,\"stdev\":...,\"unit\":...}. Progress goes to stderr.

  --quick   a smoke run: 0.2 s warm-up, 3 rounds of 0.3 s (default: 1 s, 4 rounds of 2 s)
  --metrics every node serves Prometheus metrics, scraped every 100 ms during the rows
  --metrics-compare
            each row twice, in processes of their own: metrics off, then on (rows named
            NAME_metrics_off and NAME_metrics_on)
  --list    print the known rows (name, unit, what one operation is) and exit
  -h, --help";

fn main() -> ExitCode {
    // A worker process (one a Shoal node started from this executable, with SHOAL_WORKER_ID
    // set) is taken over before `main` by the constructor that `#[shoal::remote]` emits, and
    // never gets here. If one does, that constructor was not linked in: running the rows in
    // a worker would start nodes and workers without end, so stop.
    if std::env::var_os("SHOAL_WORKER_ID").is_some() {
        eprintln!("shoal-bench: SHOAL_WORKER_ID is set but worker mode was not entered; exiting");
        return ExitCode::FAILURE;
    }
    // The process_spawn_seconds child: exit before doing anything else.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__exit") {
        return ExitCode::SUCCESS;
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(result) = shoal_bench::limits::run_hidden(&args)
        .or_else(|| shoal_bench::remote_rows::run_hidden(&args))
        .or_else(|| shoal_bench::mesh_rows::run_hidden(&args))
        .or_else(|| shoal_bench::fault_rows::run_hidden(&args))
    {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoal-bench {:?}: error: {e:#}", args[0]);
                ExitCode::FAILURE
            }
        };
    }

    let registry = shoal_bench::registry();
    match parse(&args, &registry) {
        Ok(Cli::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Cli::List) => {
            for row in registry.rows() {
                println!("{}\t{}\t{}", row.default_name(), row.unit, row.about);
            }
            ExitCode::SUCCESS
        }
        Ok(Cli::Run {
            method,
            names,
            metrics: Metrics::Compare,
        }) => compare(method, &names),
        Ok(Cli::Run {
            method,
            names,
            metrics,
        }) => {
            if metrics == Metrics::On {
                // Read by the embedded node and by every `shoal node` the rows start (before
                // any thread: the environment is the process's).
                std::env::set_var("SHOAL_METRICS", "127.0.0.1:0");
                std::env::set_var(shoal_bench::scrape::ENV, "on");
                if let Err(e) = shoal_bench::scrape::start() {
                    eprintln!("shoal-bench: cannot start the scraper: {e}");
                    return ExitCode::FAILURE;
                }
            }
            run(&registry, method, &names)
        }
        Err(msg) => {
            eprintln!("shoal-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

enum Cli {
    Help,
    List,
    Run {
        method: Method,
        names: Vec<String>,
        metrics: Metrics,
    },
}

/// Whether the nodes serve metrics.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Metrics {
    Off,
    On,
    /// Each row off, then on.
    Compare,
}

fn parse(args: &[OsString], registry: &Registry) -> Result<Cli, String> {
    let mut method = Method::FULL;
    let mut metrics = Metrics::Off;
    let mut list = false;
    let mut names = Vec::new();
    let mut options_done = false;
    for arg in args {
        let arg = arg
            .to_str()
            .ok_or_else(|| format!("argument {arg:?} is not UTF-8\n{USAGE}"))?;
        match arg {
            "--" if !options_done => options_done = true,
            "--quick" if !options_done => method = Method::QUICK,
            "--metrics" if !options_done => metrics = Metrics::On,
            "--metrics-compare" if !options_done => metrics = Metrics::Compare,
            "--list" if !options_done => list = true,
            "-h" | "--help" if !options_done => return Ok(Cli::Help),
            _ if arg.starts_with('-') && !options_done => {
                return Err(format!("unknown option {arg}\n{USAGE}"))
            }
            _ => names.push(arg.to_owned()),
        }
    }
    if list {
        return Ok(Cli::List);
    }
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| registry.resolve(n).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<String> = registry
            .rows()
            .iter()
            .map(|r| match r.default_size {
                Some(_) => format!("{}[_N]", r.name),
                None => r.name.to_owned(),
            })
            .collect();
        return Err(format!(
            "unknown benchmark{} {}\nknown benchmarks: {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            known.join(" ")
        ));
    }
    if names.is_empty() {
        names = registry.rows().iter().map(|r| r.name.to_owned()).collect();
    }
    Ok(Cli::Run {
        method,
        names,
        metrics,
    })
}

/// Runs each row in two processes of this program, metrics off then on, and prints their
/// rows renamed `NAME_metrics_off` and `NAME_metrics_on`.
fn compare(method: Method, names: &[String]) -> ExitCode {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("shoal-bench: cannot find this executable");
        return ExitCode::FAILURE;
    };
    let mut ok = true;
    for name in names {
        for (suffix, on) in [("metrics_off", false), ("metrics_on", true)] {
            let mut cmd = std::process::Command::new(&exe);
            if method == Method::QUICK {
                cmd.arg("--quick");
            }
            if on {
                cmd.arg("--metrics");
            }
            cmd.arg(name).env_remove("SHOAL_METRICS");
            cmd.stderr(std::process::Stdio::inherit());
            let out = match cmd.output() {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("shoal-bench: running {name} ({suffix}): {e}");
                    ok = false;
                    continue;
                }
            };
            ok &= out.status.success();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(mut row) => {
                        if let Some(n) = row["name"].as_str() {
                            row["name"] = format!("{n}_{suffix}").into();
                        }
                        println!("{row}");
                    }
                    Err(_) => println!("{line}"),
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Stops what rows left running for later rows (node processes) when dropped: at the end of
/// the run, and when a panic unwinds through it.
struct ReleaseFixtures;

impl Drop for ReleaseFixtures {
    fn drop(&mut self) {
        shoal_bench::release_fixtures();
    }
}

fn run(registry: &Registry, method: Method, names: &[String]) -> ExitCode {
    let _release = ReleaseFixtures;
    let mut failed = Vec::new();
    for requested in names {
        let Some((row, name, size)) = registry.resolve(requested) else {
            unreachable!("names are checked by parse");
        };
        shoal_bench::before_row(row.name);
        let mut bench = Bench::new(name, row.unit, method, size);
        let outcome = (row.run)(&mut bench).and_then(|()| match bench.take_result() {
            Some(_) => Ok(()),
            None => Err(anyhow::anyhow!(
                "the row returned without measuring anything"
            )),
        });
        if let Err(e) = outcome {
            eprintln!("{}: FAILED: {e:#}", bench.name());
            failed.push(bench.name().to_owned());
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "shoal-bench: {} row(s) failed: {}",
            failed.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}
