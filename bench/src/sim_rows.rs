//! The simulator's own speed: how many inputs the simulated cores handle per wall-clock
//! second, so that a slower simulator (and so a slower CI) shows; and membership at scale in
//! its own simulator (`sim_*` rows: **simulated peers, virtual time**, so their figures are
//! the protocol's, the same on every machine, not this machine's).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_node::sim::swim::{SwimSim, SwimSimConfig};
use shoal_node::sim::{scenario, Sim, SimArg, SimConfig, TaskOpts};

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
    reg.add_sized(
        "sim_membership_converge_seconds",
        Unit::Seconds,
        1000,
        "SIMULATED peers, virtual seconds (node/src/sim/swim.rs): N peers join through 3 \
         seeds over N/500 s; from the first join until every view holds every peer",
        sim_membership_converge_seconds,
    );
    reg.add_sized(
        "sim_failure_detect_seconds",
        Unit::Seconds,
        1000,
        "SIMULATED peers, virtual seconds: in a converged mesh of N, one peer is killed (the 8 \
         peers connected to it see their connections close); until it has left every view",
        sim_failure_detect_seconds,
    );
    reg.add(
        "sim_spill_ramp_seconds_10000_tasks_100_peers",
        Unit::Seconds,
        "SIMULATED peers, virtual seconds (node/src/sim): 100 peers of 2 CPUs sampling loads \
         as under SWIM, one driver submits 10,000 tasks of 10 ms; until every result is in \
         (every peer runs some; issue 15's spill_ramp_seconds_10000_tasks_100_peers)",
        sim_spill_ramp_seconds,
    );
    reg.add_sized(
        "sim_idle_peer_gossip_bytes_per_second",
        Unit::BytesPerSec,
        1000,
        "SIMULATED peers, virtual time: membership bytes an idle peer sends and receives per \
         second in a converged mesh of N (38-byte peer ids), averaged over the peers",
        sim_idle_peer_gossip_bytes_per_second,
    );
}

fn sim_spill_ramp_seconds(b: &mut Bench) -> Result<()> {
    let (peers, tasks) = (100, 10_000u32);
    let mut seed = 0;
    b.run_sampled(|_| {
        seed += 1;
        let r = scenario::ramp(peers, tasks, 10, Some(1), seed).map_err(anyhow::Error::msg)?;
        ensure!(r.busy == peers, "{} peers ran nothing", peers - r.busy);
        ensure!(r.violations.is_empty(), "{:?}", r.violations);
        Ok(r.all.as_secs_f64())
    })?;
    Ok(())
}

/// A mesh of `n` simulated peers joining over `n`/500 s.
fn swim_mesh(seed: u64, n: usize) -> SwimSim {
    SwimSim::new(
        seed,
        SwimSimConfig {
            peers: n,
            join_over: Duration::from_secs_f64(n as f64 / 500.0),
            ..Default::default()
        },
    )
}

/// Runs `sim` until its views agree, within a virtual minute.
fn converge(sim: &mut SwimSim) -> Result<Duration> {
    sim.run_until_converged(Duration::from_millis(50), Duration::from_secs(60))
        .with_context(|| {
            format!(
                "not converged in 60 s: {} peers miscounted",
                sim.miscounted()
            )
        })
}

fn sim_membership_converge_seconds(b: &mut Bench) -> Result<()> {
    let n = b
        .size()
        .context("sim_membership_converge_seconds runs with a size")? as usize;
    let mut seed = 0;
    b.run_sampled(|_| {
        seed += 1;
        let mut sim = swim_mesh(seed, n);
        Ok(converge(&mut sim)?.as_secs_f64())
    })?;
    Ok(())
}

fn sim_failure_detect_seconds(b: &mut Bench) -> Result<()> {
    let n = b
        .size()
        .context("sim_failure_detect_seconds runs with a size")? as usize;
    ensure!(n >= 2, "a mesh of one detects nobody");
    let mut sim = swim_mesh(1, n);
    converge(&mut sim)?;
    let mut victim = 0;
    b.run_sampled(|_| {
        // A different peer each time, spread over the mesh; a settled mesh before each.
        let settle = sim.elapsed() + Duration::from_secs(5);
        sim.run_until(settle);
        victim = (victim + n / 7 + 1) % n;
        while sim.peer(victim).is_none() {
            victim = (victim + 1) % n;
        }
        sim.kill(victim);
        Ok(converge(&mut sim)?.as_secs_f64())
    })?;
    ensure!(sim.false_deaths() == 0, "a live peer was declared dead");
    Ok(())
}

fn sim_idle_peer_gossip_bytes_per_second(b: &mut Bench) -> Result<()> {
    let n = b
        .size()
        .context("sim_idle_peer_gossip_bytes_per_second runs with a size")? as usize;
    let mut sim = swim_mesh(1, n);
    converge(&mut sim)?;
    // The join's news dies down first.
    let settle = sim.elapsed() + Duration::from_secs(20);
    sim.run_until(settle);
    b.run_sampled(|_| {
        let window = Duration::from_secs(10);
        let before: u64 = (0..n).map(|i| sim.bytes(i)).sum();
        let until = sim.elapsed() + window;
        sim.run_until(until);
        let after: u64 = (0..n).map(|i| sim.bytes(i)).sum();
        Ok((after - before) as f64 / n as f64 / window.as_secs_f64())
    })?;
    Ok(())
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
