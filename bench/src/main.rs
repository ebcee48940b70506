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
usage: shoal-bench [--quick] [--list] [NAME...]

Runs the named benchmark rows (all when none is named) and prints one JSON object per row
on stdout: {\"name\":...,\"value\":...,\"stdev\":...,\"unit\":...}. Progress goes to stderr.

  --quick   a smoke run: 0.2 s warm-up, 3 rounds of 0.3 s (default: 1 s, 4 rounds of 2 s)
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
        Ok(Cli::Run { method, names }) => run(&registry, method, &names),
        Err(msg) => {
            eprintln!("shoal-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

enum Cli {
    Help,
    List,
    Run { method: Method, names: Vec<String> },
}

fn parse(args: &[OsString], registry: &Registry) -> Result<Cli, String> {
    let mut method = Method::FULL;
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
    Ok(Cli::Run { method, names })
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
