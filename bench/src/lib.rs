//! `shoal-bench`: the benchmark runner of BENCH.md.
//!
//! [`harness`] holds the measuring method and the row registry, [`limits`] the rows that
//! measure the machine, [`shoal_rows`] and [`actor_rows`] the rows that measure Shoal, and
//! [`mesh_rows`] and [`remote_rows`] those that measure the mesh (in-process peers and real
//! `shoal node` processes; [`remote_rows`]: work run on another node), and [`sim_rows`] the
//! speed of the simulator, and [`fault_rows`] recovery from faults. The binary (`main.rs`) is the command line around them.

// The module docs explain the rows through their private helpers.
#![allow(rustdoc::private_intra_doc_links)]

pub mod actor_rows;
pub mod fault_rows;
pub mod harness;
pub mod limits;
pub mod mesh_rows;
pub mod remote_rows;
pub mod scrape;
pub mod shoal_rows;
pub mod sim_rows;

pub use harness::{Bench, Measurement, Method, Registry, Row, RowFn, Tally, Unit};

/// Every row, in the order they run when none is named: the machine's limits first (the
/// reference), then Shoal's rows.
pub fn registry() -> Registry {
    let mut reg = Registry::new();
    limits::register(&mut reg);
    shoal_rows::register(&mut reg);
    actor_rows::register(&mut reg);
    remote_rows::register(&mut reg);
    mesh_rows::register(&mut reg);
    fault_rows::register(&mut reg);
    sim_rows::register(&mut reg);
    reg
}

/// Called by the runner before each row (`row` is its registered name, without `_N`): stops
/// what earlier rows left running for the rows after them (the idle mesh of [`mesh_rows`]),
/// unless this row uses it.
pub fn before_row(row: &str) {
    mesh_rows::before_row(row);
}

/// Stops everything rows left running for later rows. The runner calls it when it is done,
/// also when unwinding from a panic.
pub fn release_fixtures() {
    mesh_rows::release_idle_mesh();
}
