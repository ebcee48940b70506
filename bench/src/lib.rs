//! `shoal-bench`: the benchmark runner of BENCH.md.
//!
//! [`harness`] holds the measuring method and the row registry, [`limits`] the rows that
//! measure the machine, [`shoal_rows`] and [`actor_rows`] the rows that measure Shoal. The
//! binary (`main.rs`) is the command line around them.

pub mod actor_rows;
pub mod harness;
pub mod limits;
pub mod shoal_rows;

pub use harness::{Bench, Measurement, Method, Registry, Row, RowFn, Unit};

/// Every row, in the order they run when none is named: the machine's limits first (the
/// reference), then Shoal's rows.
pub fn registry() -> Registry {
    let mut reg = Registry::new();
    limits::register(&mut reg);
    shoal_rows::register(&mut reg);
    actor_rows::register(&mut reg);
    reg
}
