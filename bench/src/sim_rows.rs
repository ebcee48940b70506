//! The simulator's own speed: how many inputs the simulated cores handle per wall-clock
//! second, so that a slower simulator (and so a slower CI) shows.

use std::time::Duration;

use anyhow::{ensure, Result};
use shoal_node::sim::{Sim, SimArg, SimConfig, TaskOpts};

use crate::{Bench, Registry, Unit};

/// Peers of the simulated mesh.
const PEERS: usize = 100;

/// Registers the rows of this module.
pub fn register(reg: &mut Registry) {
    reg.add(
        "sim_events_per_second",
        Unit::OpsPerSec,
        "inputs handled per wall-clock second by a simulated mesh of 100 peers (2 CPUs each) \
         with 10 drivers keeping tasks spilling across it (node/src/sim)",
        sim_events_per_second,
    );
}

fn sim_events_per_second(b: &mut Bench) -> Result<()> {
    let mut sim = Sim::new(
        1,
        SimConfig {
            nodes: PEERS,
            cpus: vec![2.0; PEERS],
            ..Default::default()
        },
    );
    let drivers: Vec<usize> = (0..10).map(|i| sim.driver(i * (PEERS / 10))).collect();
    sim.run_for(Duration::from_secs(1));
    let mut round = 0u8;
    b.run_batches(|| {
        let before = sim.inputs;
        round = round.wrapping_add(1);
        // Each driver asks for more than its peer can run: the rest spills.
        for &d in &drivers {
            for i in 0..40u8 {
                let args = vec![SimArg::Value(vec![round, i])];
                let id = sim.submit(d, "sleep:100", args, TaskOpts::default());
                sim.release(d, id);
            }
        }
        sim.run_for(Duration::from_millis(500));
        Ok(sim.inputs - before)
    })?;
    ensure!(sim.violations().is_empty(), "{:?}", sim.violations());
    Ok(())
}
