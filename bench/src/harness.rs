//! The measuring method of BENCH.md, and the registry of rows.
//!
//! The method is Ray's (`ray._private.ray_microbenchmark_helpers.timeit`): a warm-up of at
//! least [`Method::warmup`], then [`Method::rounds`] timed rounds of at least [`Method::round`]
//! each. A round calls the benchmark again and again until its time is used (always at least
//! once) and yields one figure; `value` is the mean of the rounds' figures and `stdev` their
//! standard deviation (population, `numpy.std`'s default, as Ray). One JSON object per row is
//! printed on stdout; progress goes to stderr.
//!
//! A row is a plain function `fn(&mut Bench) -> anyhow::Result<()>` registered in a
//! [`Registry`] under its BENCH.md name and unit. It does its (untimed) set-up, then calls
//! exactly one of [`Bench::run_batches`] or [`Bench::run_tallied`] (units `ops/s`, `GB/s`),
//! [`Bench::run_timed`] (units `s`, `us`) or [`Bench::run_sampled`] (any unit; for the gauges
//! `%`, `MB`, `B/s` of rows that observe a process rather than time work), then tears down.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The unit of a row, as printed in its JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Operations per second: the batch closure returns how many operations it did.
    OpsPerSec,
    /// 10^9 bytes per second: the batch closure returns how many bytes it moved.
    GbPerSec,
    /// Seconds per operation: the closure returns the duration of one operation.
    Seconds,
    /// Microseconds per operation: the closure returns the duration of one operation.
    Micros,
    /// Percent (e.g. of one CPU): measured with [`Bench::run_sampled`].
    Percent,
    /// 10^6 bytes (a size, e.g. resident memory): measured with [`Bench::run_sampled`].
    Megabytes,
    /// Bytes per second (a rate observed, not work done): measured with
    /// [`Bench::run_sampled`].
    BytesPerSec,
}

impl Unit {
    /// The unit's spelling in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::OpsPerSec => "ops/s",
            Unit::GbPerSec => "GB/s",
            Unit::Seconds => "s",
            Unit::Micros => "us",
            Unit::Percent => "%",
            Unit::Megabytes => "MB",
            Unit::BytesPerSec => "B/s",
        }
    }

    /// Whether the row is a rate of work done (measured with [`Bench::run_batches`]).
    pub fn is_rate(self) -> bool {
        matches!(self, Unit::OpsPerSec | Unit::GbPerSec)
    }

    /// Whether the row is a duration per operation (measured with [`Bench::run_timed`]).
    pub fn is_duration(self) -> bool {
        matches!(self, Unit::Seconds | Unit::Micros)
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long to warm up and to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    pub warmup: Duration,
    pub rounds: usize,
    pub round: Duration,
}

impl Method {
    /// BENCH.md's method: a warm-up of 1 s, then 4 rounds of 2 s.
    pub const FULL: Method = Method {
        warmup: Duration::from_secs(1),
        rounds: 4,
        round: Duration::from_secs(2),
    };

    /// `--quick`: a smoke run that proves the rows still work; its figures are rough.
    pub const QUICK: Method = Method {
        warmup: Duration::from_millis(200),
        rounds: 3,
        round: Duration::from_millis(300),
    };
}

/// The result of one row.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub unit: Unit,
    /// The figure of each timed round, in `unit`.
    pub rounds: Vec<f64>,
    /// The mean of `rounds`.
    pub value: f64,
    /// The population standard deviation of `rounds`.
    pub stdev: f64,
}

impl Measurement {
    fn from_rounds(name: &str, unit: Unit, rounds: Vec<f64>) -> Measurement {
        let (value, stdev) = mean_stdev(&rounds);
        Measurement {
            name: name.to_owned(),
            unit,
            rounds,
            value,
            stdev,
        }
    }

    /// The row's JSON object, on one line, keys in BENCH.md's order:
    /// `{"name":…,"value":…,"stdev":…,"unit":…}`. A non-finite number is printed as `null`.
    pub fn json_line(&self) -> String {
        let num = |x: f64| serde_json::Value::from(x).to_string();
        format!(
            "{{\"name\":{},\"value\":{},\"stdev\":{},\"unit\":{}}}",
            serde_json::Value::from(self.name.as_str()),
            num(self.value),
            num(self.stdev),
            serde_json::Value::from(self.unit.as_str()),
        )
    }
}

/// The `p`th percentile (0 to 100, nearest rank) of `times`, which it sorts; `None` for none.
pub fn percentile(times: &mut [Duration], p: f64) -> Option<Duration> {
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    let rank = (p / 100.0 * times.len() as f64).ceil() as usize;
    Some(times[rank.clamp(1, times.len()) - 1])
}

/// Mean and population standard deviation.
pub fn mean_stdev(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// What one round of a rate row measured with [`Bench::run_tallied`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Operations done (for `GB/s` rows: bytes moved).
    pub amount: u64,
    /// The time the operations took, as the row counts it: the divisor of the round's figure.
    pub timed: Duration,
    /// How many batches of work the round ran.
    pub batches: u64,
    /// The round's wall-clock time (at least the round's time; more than `timed` when the
    /// row leaves set-up out).
    pub wall: Duration,
}

/// The handle a row function gets: its name, its unit, the method, and the two ways to
/// measure. A row must measure exactly once.
pub struct Bench {
    name: String,
    unit: Unit,
    method: Method,
    size: Option<u64>,
    result: Option<Measurement>,
}

impl Bench {
    /// The factor from units counted to this row's rate unit; an error for a row that is
    /// not a rate (`why` says which method to use instead).
    fn rate_scale(&self, why: &str) -> Result<f64> {
        ensure!(
            self.unit.is_rate(),
            "row {} has unit {}: {why}",
            self.name,
            self.unit
        );
        Ok(match self.unit {
            Unit::GbPerSec => 1e-9,
            _ => 1.0,
        })
    }

    /// A handle for the row `name` (the name printed in the JSON object).
    pub fn new(name: impl Into<String>, unit: Unit, method: Method, size: Option<u64>) -> Bench {
        Bench {
            name: name.into(),
            unit,
            method,
            size,
            result: None,
        }
    }

    /// The name printed for this row, e.g. `memcpy_gigabytes` or `mesh_converge_seconds_20`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Whether this is a `--quick` run (a row may shrink its set-up, e.g. fewer nodes).
    pub fn is_quick(&self) -> bool {
        self.method == Method::QUICK
    }

    /// For a row registered with [`Registry::add_sized`]: the `N` of `name_N` (or the
    /// row's default when run as plain `name`). `None` for other rows.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The measurement, once taken.
    pub fn result(&self) -> Option<&Measurement> {
        self.result.as_ref()
    }

    /// Takes the measurement out (the runner does this after the row function returned).
    pub fn take_result(&mut self) -> Option<Measurement> {
        self.result.take()
    }

    /// Measures a rate (`ops/s` or `GB/s` rows). `batch` performs one batch of work and
    /// returns how many operations it did (for `GB/s` rows: how many bytes it moved). It is
    /// called repeatedly until each round's time is used, so a batch should take well under
    /// the round's time (a few ms to a few hundred ms). A round's figure is the operations
    /// (bytes / 10^9) of its batches divided by the round's wall-clock time.
    ///
    /// Prints the row's JSON line on stdout and returns the measurement.
    pub fn run_batches<F>(&mut self, mut batch: F) -> Result<Measurement>
    where
        F: FnMut() -> Result<u64>,
    {
        let scale = self.rate_scale("measure it with run_timed, not run_batches")?;
        let unit = self.unit;
        self.measure(|until| {
            let start = Instant::now();
            let mut total: u64 = 0;
            let mut calls: u64 = 0;
            loop {
                total = total.saturating_add(batch()?);
                calls += 1;
                if start.elapsed() >= until {
                    break;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let figure = total as f64 * scale / secs;
            let note = format!(
                "{figure:.6} {unit} ({calls} batches, {total} {}, {secs:.3} s)",
                if unit == Unit::GbPerSec {
                    "bytes"
                } else {
                    "ops"
                }
            );
            Ok((figure, note))
        })
    }

    /// Measures a rate (`ops/s` or `GB/s` rows) whose rounds count their own time: for rows
    /// whose work runs in another process, or that leave per-operation set-up out of the time.
    /// `round(d)` works for at least `d` of wall-clock time and returns its [`Tally`]; the
    /// round's figure is the tally's operations (bytes / 10^9) divided by its `timed` time
    /// (not the wall-clock time).
    ///
    /// Prints the row's JSON line on stdout and returns the measurement.
    pub fn run_tallied<F>(&mut self, mut round: F) -> Result<Measurement>
    where
        F: FnMut(Duration) -> Result<Tally>,
    {
        let scale = self.rate_scale("run_tallied measures rates")?;
        let unit = self.unit;
        self.measure(|d| {
            let t = round(d)?;
            let secs = t.timed.as_secs_f64();
            ensure!(
                secs > 0.0,
                "a round did {} {} in no time",
                t.amount,
                if unit == Unit::GbPerSec {
                    "bytes"
                } else {
                    "ops"
                }
            );
            let figure = t.amount as f64 * scale / secs;
            let note = format!(
                "{figure:.6} {unit} ({} batches, {} {}, {secs:.3} s timed of {:.3} s)",
                t.batches,
                t.amount,
                if unit == Unit::GbPerSec {
                    "bytes"
                } else {
                    "ops"
                },
                t.wall.as_secs_f64()
            );
            Ok((figure, note))
        })
    }

    /// Measures a duration per operation (`s` or `us` rows). `op` performs one operation
    /// and returns how long it took (it times itself, so it may exclude its own set-up and
    /// tear-down). It is called repeatedly until each round's time is used, and at least once
    /// per round; a round's figure is the mean duration of its calls.
    ///
    /// Prints the row's JSON line on stdout and returns the measurement.
    pub fn run_timed<F>(&mut self, mut op: F) -> Result<Measurement>
    where
        F: FnMut() -> Result<Duration>,
    {
        ensure!(
            self.unit.is_duration(),
            "row {} has unit {}: measure it with {}, not run_timed",
            self.name,
            self.unit,
            if self.unit.is_rate() {
                "run_batches"
            } else {
                "run_sampled"
            }
        );
        let scale = match self.unit {
            Unit::Micros => 1e6,
            _ => 1.0,
        };
        let unit = self.unit;
        self.measure(|until| {
            let start = Instant::now();
            let mut sum = Duration::ZERO;
            let mut calls: u32 = 0;
            loop {
                sum += op()?;
                calls += 1;
                if start.elapsed() >= until {
                    break;
                }
            }
            let figure = sum.as_secs_f64() / f64::from(calls) * scale;
            let note = format!("{figure:.9} {unit} (mean of {calls} operations)");
            Ok((figure, note))
        })
    }

    /// Measures a figure that is observed rather than timed (a process's CPU use, its
    /// resident memory, the bytes it sends per second): `sample(d)` observes for at least `d`
    /// (it may choose to observe longer) and returns the round's figure in the row's unit. It
    /// is called once for the warm-up and once per round; `value` is the mean of the rounds'
    /// figures. Any unit may be measured this way.
    ///
    /// Prints the row's JSON line on stdout and returns the measurement.
    pub fn run_sampled<F>(&mut self, mut sample: F) -> Result<Measurement>
    where
        F: FnMut(Duration) -> Result<f64>,
    {
        let unit = self.unit;
        self.measure(|d| {
            let start = Instant::now();
            let figure = sample(d)?;
            ensure!(figure.is_finite(), "a sample of {figure} {unit}");
            let note = format!(
                "{figure:.6} {unit} (observed for {:.3} s)",
                start.elapsed().as_secs_f64()
            );
            Ok((figure, note))
        })
    }

    /// Measures a percentile of a latency (a `us` row): `round(d)` performs operations one
    /// at a time for at least `d` and returns how long each took; a round's figure is the
    /// `p`th percentile (nearest rank) of its operations' times, in microseconds, and the row's
    /// value is the mean of the rounds' figures, as for every row.
    ///
    /// Prints the row's JSON line on stdout and returns the measurement.
    pub fn run_percentile<F>(&mut self, p: f64, mut round: F) -> Result<Measurement>
    where
        F: FnMut(Duration) -> Result<Vec<Duration>>,
    {
        ensure!(
            self.unit == Unit::Micros,
            "row {}: a percentile of latencies is in us, not {}",
            self.name,
            self.unit
        );
        self.measure(|d| {
            let mut times = round(d)?;
            let figure = percentile(&mut times, p)
                .context("a round of no operations")?
                .as_secs_f64()
                * 1e6;
            let note = format!(
                "p{p} {figure:.1} us of {} operations (p50 {:.1} us, max {:.1} us)",
                times.len(),
                percentile(&mut times, 50.0)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e6,
                percentile(&mut times, 100.0)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e6,
            );
            Ok((figure, note))
        })
    }

    /// Warm-up, rounds, output. `round(d)` runs for at least `d` and returns its figure and
    /// a progress note.
    fn measure<R>(&mut self, mut round: R) -> Result<Measurement>
    where
        R: FnMut(Duration) -> Result<(f64, String)>,
    {
        if self.result.is_some() {
            bail!(
                "row {} measured twice: a row measures exactly once",
                self.name
            );
        }
        let m = self.method;
        eprintln!("{}: warm-up {:.1} s", self.name, m.warmup.as_secs_f64());
        let (_, note) = round(m.warmup).context("during warm-up")?;
        eprintln!("{}:   warm-up {note}", self.name);
        let mut figures = Vec::with_capacity(m.rounds);
        for i in 1..=m.rounds {
            let (figure, note) = round(m.round).with_context(|| format!("in round {i}"))?;
            eprintln!("{}:   round {i}/{}: {note}", self.name, m.rounds);
            figures.push(figure);
        }
        let result = Measurement::from_rounds(&self.name, self.unit, figures);
        eprintln!(
            "{}: {} ± {} {}",
            self.name, result.value, result.stdev, self.unit
        );
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", result.json_line())
            .and_then(|()| out.flush())
            .context("writing the result to stdout")?;
        self.result = Some(result.clone());
        Ok(result)
    }
}

/// A row function: set-up, one call to [`Bench::run_batches`] or [`Bench::run_timed`],
/// tear-down. Errors are reported and the runner goes on with the next row.
pub type RowFn = fn(&mut Bench) -> Result<()>;

/// A registered row.
#[derive(Clone, Debug)]
pub struct Row {
    /// The BENCH.md name (for a sized row: the name without its `_N` suffix).
    pub name: &'static str,
    pub unit: Unit,
    /// One line for `--list`: what one operation is.
    pub about: &'static str,
    pub run: RowFn,
    /// For a sized row (`name_N`): the N used when none is given.
    pub default_size: Option<u64>,
}

impl Row {
    /// The name printed when the row is run without an explicit size.
    pub fn default_name(&self) -> String {
        match self.default_size {
            Some(n) => format!("{}_{n}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// The rows `shoal-bench` knows, in the order they run when none is named.
#[derive(Default)]
pub struct Registry {
    rows: Vec<Row>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers the row `name`. Panics if the name is taken (a programming error).
    pub fn add(&mut self, name: &'static str, unit: Unit, about: &'static str, run: RowFn) {
        self.push(Row {
            name,
            unit,
            about,
            run,
            default_size: None,
        });
    }

    /// Registers a sized row: it is asked for as `name_N` (e.g. `mesh_converge_seconds_20`,
    /// N in [`Bench::size`]) and runs as `name_{default_size}` when not named explicitly.
    pub fn add_sized(
        &mut self,
        name: &'static str,
        unit: Unit,
        default_size: u64,
        about: &'static str,
        run: RowFn,
    ) {
        self.push(Row {
            name,
            unit,
            about,
            run,
            default_size: Some(default_size),
        });
    }

    fn push(&mut self, row: Row) {
        assert!(
            self.rows.iter().all(|r| r.name != row.name),
            "benchmark row {} registered twice",
            row.name
        );
        self.rows.push(row);
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Finds the row for a requested name, and the name and size it runs under: an exact
    /// name, or `name_N` for a sized row.
    pub fn resolve(&self, requested: &str) -> Option<(&Row, String, Option<u64>)> {
        if let Some(row) = self.rows.iter().find(|r| r.name == requested) {
            return Some((row, row.default_name(), row.default_size));
        }
        self.rows.iter().find_map(|row| {
            row.default_size?;
            let n: u64 = requested
                .strip_prefix(row.name)?
                .strip_prefix('_')?
                .parse()
                .ok()?;
            Some((row, requested.to_owned(), Some(n)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop(_: &mut Bench) -> Result<()> {
        Ok(())
    }

    #[test]
    fn json_line_has_contract_shape() {
        let m = Measurement::from_rounds("x\"y", Unit::GbPerSec, vec![1.0, 3.0]);
        assert_eq!(
            m.json_line(),
            r#"{"name":"x\"y","value":2.0,"stdev":1.0,"unit":"GB/s"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&m.json_line()).unwrap();
        assert_eq!(v["unit"], "GB/s");
    }

    #[test]
    fn stdev_is_population() {
        let (mean, sd) = mean_stdev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(mean, 5.0);
        assert_eq!(sd, 2.0);
    }

    #[test]
    fn resolve_exact_and_sized() {
        let mut reg = Registry::new();
        reg.add("a_seconds", Unit::Seconds, "", nop);
        reg.add_sized("mesh_converge_seconds", Unit::Seconds, 5, "", nop);
        let (row, name, size) = reg.resolve("a_seconds").unwrap();
        assert_eq!(
            (row.name, name.as_str(), size),
            ("a_seconds", "a_seconds", None)
        );
        let (_, name, size) = reg.resolve("mesh_converge_seconds").unwrap();
        assert_eq!((name.as_str(), size), ("mesh_converge_seconds_5", Some(5)));
        let (_, name, size) = reg.resolve("mesh_converge_seconds_20").unwrap();
        assert_eq!(
            (name.as_str(), size),
            ("mesh_converge_seconds_20", Some(20))
        );
        assert!(reg.resolve("mesh_converge_seconds_x").is_none());
        assert!(reg.resolve("a_seconds_3").is_none());
        assert!(reg.resolve("nope").is_none());
    }

    #[test]
    fn batches_count_rounds_and_measure_once() {
        let quick = Method {
            warmup: Duration::from_millis(1),
            rounds: 3,
            round: Duration::from_millis(5),
        };
        let mut b = Bench::new("t", Unit::OpsPerSec, quick, None);
        let m = b.run_batches(|| Ok(10)).unwrap();
        assert_eq!(m.rounds.len(), 3);
        assert!(m.value > 0.0);
        assert!(
            b.run_batches(|| Ok(1)).is_err(),
            "second measurement refused"
        );
        assert!(
            b.run_timed(|| Ok(Duration::ZERO)).is_err(),
            "wrong kind refused"
        );

        let mut b = Bench::new("u", Unit::Micros, quick, None);
        let m = b.run_timed(|| Ok(Duration::from_micros(3))).unwrap();
        assert!((m.value - 3.0).abs() < 1e-9 && m.stdev < 1e-9);

        let mut b = Bench::new("g", Unit::GbPerSec, quick, None);
        let m = b
            .run_tallied(|d| {
                Ok(Tally {
                    amount: 2_000_000_000,
                    timed: Duration::from_secs(1),
                    batches: 1,
                    wall: d,
                })
            })
            .unwrap();
        assert_eq!(m.rounds, vec![2.0; 3], "bytes / 10^9 / timed seconds");
        let mut b = Bench::new("z", Unit::OpsPerSec, quick, None);
        assert!(
            b.run_tallied(|_| Ok(Tally::default())).is_err(),
            "no time counted"
        );
        let mut b = Bench::new("s", Unit::Seconds, quick, None);
        assert!(
            b.run_tallied(|_| Ok(Tally::default())).is_err(),
            "a duration is timed"
        );

        let mut b = Bench::new("p", Unit::Percent, quick, None);
        assert!(
            b.run_timed(|| Ok(Duration::ZERO)).is_err(),
            "a gauge is sampled"
        );
        assert!(b.run_batches(|| Ok(1)).is_err(), "a gauge is sampled");
        let mut calls = 0;
        let m = b
            .run_sampled(|d| {
                assert_eq!(
                    d,
                    if calls == 0 {
                        quick.warmup
                    } else {
                        quick.round
                    }
                );
                calls += 1;
                Ok(f64::from(calls))
            })
            .unwrap();
        assert_eq!(calls, 4, "a warm-up and 3 rounds");
        assert_eq!(m.rounds, vec![2.0, 3.0, 4.0]);
        assert_eq!(
            m.json_line(),
            r#"{"name":"p","value":3.0,"stdev":0.816496580927726,"unit":"%"}"#
        );
        let mut b = Bench::new("q", Unit::Megabytes, quick, None);
        assert!(
            b.run_sampled(|_| Ok(f64::NAN)).is_err(),
            "a figure must be finite"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank_and_rows_of_them_are_in_us() {
        let us = Duration::from_micros;
        let mut times: Vec<Duration> = (1..=100).rev().map(us).collect();
        assert_eq!(percentile(&mut times, 50.0), Some(us(50)));
        assert_eq!(percentile(&mut times, 99.0), Some(us(99)));
        assert_eq!(percentile(&mut times, 100.0), Some(us(100)));
        assert_eq!(percentile(&mut times, 0.0), Some(us(1)));
        assert_eq!(percentile(&mut [us(7)], 99.0), Some(us(7)));
        assert_eq!(percentile(&mut [], 50.0), None);
        let quick = Method {
            warmup: Duration::from_millis(1),
            rounds: 2,
            round: Duration::from_millis(1),
        };
        let mut b = Bench::new("l", Unit::Micros, quick, None);
        let m = b
            .run_percentile(99.0, |_| Ok((1..=200).map(us).collect()))
            .unwrap();
        assert_eq!(m.rounds, vec![198.0, 198.0]);
        let mut b = Bench::new("l", Unit::Micros, quick, None);
        assert!(b.run_percentile(50.0, |_| Ok(Vec::new())).is_err());
        let mut b = Bench::new("r", Unit::OpsPerSec, quick, None);
        assert!(b.run_percentile(50.0, |_| Ok(vec![us(1)])).is_err());
    }

    #[test]
    fn units_are_spelled_as_in_the_json() {
        let all = [
            (Unit::OpsPerSec, "ops/s"),
            (Unit::GbPerSec, "GB/s"),
            (Unit::Seconds, "s"),
            (Unit::Micros, "us"),
            (Unit::Percent, "%"),
            (Unit::Megabytes, "MB"),
            (Unit::BytesPerSec, "B/s"),
        ];
        for (unit, spelling) in all {
            assert_eq!(unit.as_str(), spelling);
            assert!(!(unit.is_rate() && unit.is_duration()));
        }
    }
}
