//! Scenarios for the simulator: the spilling scenarios of the real-process tests, and a
//! randomized workload with faults whose every choice follows from a seed.

use std::time::Duration;

use shoal_protocol::{ObjectId, ObjectValue, Strategy, TaskError};

use super::{Sim, SimArg, SimConfig, TaskOpts, Violation};

/// How long the mesh gets to settle at the end of a run, and the bound on any wait.
const SETTLE: Duration = Duration::from_secs(15);

/// What a ramp ([`ramp`]) measured, in virtual time.
#[derive(Debug)]
pub struct Ramp {
    /// From the first submission until every peer had run a task (if every one did).
    pub everywhere: Option<Duration>,
    /// Until every result was in.
    pub all: Duration,
    /// Peers that ran some.
    pub busy: usize,
    /// Rounds of asking for loads the peers made.
    pub asks: u64,
    /// What broke, once the mesh settled after the ramp.
    pub violations: Vec<Violation>,
}

/// `n` peers of 2 CPUs (sampling loads from `k` reports an interval if `sample` is
/// `Some(k)`), one driver on the first submitting `tasks` tasks of `ms` each. `Err` if the
/// results are not all in within 120 virtual seconds, or one is wrong.
pub fn ramp(
    n: usize,
    tasks: u32,
    ms: u32,
    sample: Option<usize>,
    seed: u64,
) -> Result<Ramp, String> {
    let mut sim = Sim::new(
        seed,
        SimConfig {
            nodes: n,
            cpus: vec![2.0; n],
            sample_loads: sample,
            ..Default::default()
        },
    );
    let d = sim.driver(0);
    sim.run_for(Duration::from_secs(2));
    let start = sim.elapsed();
    let ids: Vec<ObjectId> = (0..tasks)
        .map(|i| {
            let arg = SimArg::Value(i.to_le_bytes().to_vec());
            sim.submit(d, &format!("sleep:{ms}"), vec![arg], TaskOpts::default())
        })
        .collect();
    let busy = |sim: &Sim| (0..n).filter(|&i| sim.runs_on(i) > 0).count();
    let mut everywhere = None;
    while sim.waiting(d) > 0 {
        if sim.elapsed() - start >= Duration::from_secs(120) {
            return Err(format!(
                "seed {seed}: {} results missing after 120 s",
                sim.waiting(d)
            ));
        }
        sim.run_for(Duration::from_millis(10));
        if everywhere.is_none() && busy(&sim) == n {
            everywhere = Some(sim.elapsed() - start);
        }
    }
    let all = sim.elapsed() - start;
    for (i, id) in ids.iter().enumerate() {
        let mut want = (i as u32).to_le_bytes().to_vec();
        want.push(b'|');
        let got = &sim.results(d)[id];
        if *got != ObjectValue::Inline(want) {
            return Err(format!("seed {seed}: result {i} is {got:?}"));
        }
    }
    Ok(Ramp {
        everywhere,
        all,
        busy: busy(&sim),
        asks: sim.load_asks,
        violations: sim.finish(Duration::from_secs(10)),
    })
}

/// A randomized run: 2 to 4 peers, 1 to 3 drivers submitting tasks (chains of them, some
/// failing or crashing their worker, some returning large objects) and calling actors,
/// putting large objects and reading them back (more than the stores hold: they spill,
/// are read back, and travel between peers), while peers are partitioned and healed, crash
/// and restart, workers die, and now and then a disk fails a spill or a restore. Returns
/// what broke.
pub fn random(seed: u64) -> Vec<Violation> {
    run_random(seed).1
}

/// What a randomized run did, to compare two runs of one seed: a digest of every result
/// every driver received, how many inputs each core handled, and what broke.
pub fn random_trace(seed: u64) -> (String, u64, Vec<Violation>) {
    let (sim, violations) = run_random(seed);
    (sim.digest().to_hex().to_string(), sim.inputs, violations)
}

fn run_random(seed: u64) -> (Sim, Vec<Violation>) {
    let mut sim = random_mesh(seed);
    let nodes = sim.nodes();
    let drivers: Vec<usize> = (0..1 + sim.rng().below(3))
        .map(|_| {
            let n = sim.rng().below(nodes as u64) as usize;
            sim.driver(n)
        })
        .collect();
    let mut actors: Vec<(usize, shoal_protocol::ActorId)> = Vec::new();
    let mut lookups: Vec<(usize, u64)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let total_cpus: f64 = sim.cpus().iter().sum();
    let mut actor_cpus = 0.0;
    let mut owned: Vec<(usize, ObjectId)> = Vec::new();
    // Placement groups of small bundles (a tenth of a CPU each), so that they never keep
    // the mesh's CPUs from tasks for good.
    let mut groups: Vec<(usize, shoal_protocol::GroupId)> = Vec::new();
    let steps = 40 + sim.rng().below(80);
    for _ in 0..steps {
        let pause = Duration::from_millis(1 + sim.rng().below(200));
        sim.run_for(pause);
        let d = drivers[sim.rng().below(drivers.len() as u64) as usize];
        match sim.rng().below(100) {
            0..=39 => {
                let ms = 1 + sim.rng().below(300);
                let mut args = vec![SimArg::Value(vec![sim.rng().below(256) as u8])];
                // Chains: a result this driver received, or one still pending.
                let mine: Vec<ObjectId> = owned
                    .iter()
                    .filter(|(o, _)| *o == d)
                    .map(|(_, id)| *id)
                    .collect();
                if !mine.is_empty() && sim.rng().chance(0.5) {
                    let id = mine[sim.rng().below(mine.len() as u64) as usize];
                    args.push(SimArg::Ref(id));
                }
                let cpus = if sim.rng().chance(0.2) { 0.5 } else { 1.0 };
                let retries = sim.rng().below(4) as u32;
                let returns = if sim.rng().chance(0.2) { 3 } else { 1 };
                // Some streaming generators (of a `sleep:` function): 1 to 6 items, a window
                // of 1 to 3.
                let stream = (returns == 1 && sim.rng().chance(0.12))
                    .then(|| (1 + sim.rng().below(6) as u32, 1 + sim.rng().below(3) as u32));
                let opts = TaskOpts {
                    cpus,
                    retries,
                    returns,
                    stream,
                };
                let mut f = if sim.rng().chance(0.15) {
                    format!("big:{}", 1 + sim.rng().below(16))
                } else {
                    format!("sleep:{ms}")
                };
                // Some carry a ref (an object's, or an actor's handle) to wherever they
                // run, and keep it there past their end, or return it in their result.
                let handles: Vec<ObjectId> = actors
                    .iter()
                    .filter(|(o, _)| *o == d)
                    .filter_map(|(_, a)| sim.handle_of(*a))
                    .collect();
                let carried = [mine.as_slice(), handles.as_slice()].concat();
                if !carried.is_empty() && sim.rng().chance(0.12) {
                    let x = carried[sim.rng().below(carried.len() as u64) as usize];
                    f = if sim.rng().chance(0.5) {
                        "keep"
                    } else {
                        "pass"
                    }
                    .to_string();
                    args = vec![SimArg::Nested(x), SimArg::Value(x.0.to_vec())];
                }
                let opts = if f == "keep" || f == "pass" {
                    TaskOpts {
                        returns: 1,
                        stream: None,
                        ..opts
                    }
                } else {
                    opts
                };
                // Large results held and not asked for stay at their peers: a crash loses
                // them, and a later `get` has their owner make them again.
                let held = f.starts_with("big:") && sim.rng().chance(0.5);
                // Some spread, or prefer a peer (alive or not).
                let nodes = sim.nodes() as u64;
                let which = sim.rng().below(nodes) as usize;
                let peer = sim.peer_id(which);
                let mut strategy = match sim.rng().below(20) {
                    0 | 1 => Strategy::Spread,
                    2 => Strategy::prefer_peer(peer),
                    _ => Strategy::Default,
                };
                let mut opts = opts;
                let mine: Vec<_> = groups.iter().filter(|(o, _)| *o == d).collect();
                if !mine.is_empty() && sim.rng().chance(0.1) {
                    // Inside a group of this driver's: in one bundle, or in any.
                    let (_, group) = *mine[sim.rng().below(mine.len() as u64) as usize];
                    let bundle = sim.rng().chance(0.5).then(|| sim.rng().below(3) as u32);
                    strategy = Strategy::PlacementGroup { group, bundle };
                    opts.cpus = 0.1;
                }
                let id = sim.submit_with_strategy(d, &f, args, opts, held, strategy);
                owned.push((d, id));
            }
            40..=42 => {
                let id = sim.submit(d, "panic", vec![], TaskOpts::default());
                owned.push((d, id));
            }
            43..=44 => {
                let opts = TaskOpts {
                    cpus: 1.0,
                    retries: sim.rng().below(2) as u32,
                    returns: 1,
                    stream: None,
                };
                let id = sim.submit(d, "crash", vec![], opts);
                owned.push((d, id));
            }
            45..=52 if sim.rng().chance(0.25) => {
                // A group's bundles may each take part of a peer's CPU, as an actor takes
                // one: counted as whole CPUs against what actors may hold.
                let n = 1 + sim.rng().below(3) as usize;
                if actor_cpus + n as f64 >= total_cpus {
                    continue;
                }
                actor_cpus += n as f64;
                let bundles = vec![shoal_protocol::ResourceSet::cpus(0.1); n];
                let strategy = match sim.rng().below(4) {
                    0 => shoal_protocol::GroupStrategy::Pack,
                    1 => shoal_protocol::GroupStrategy::Spread,
                    2 => shoal_protocol::GroupStrategy::StrictPack,
                    // Its bundles need as many peers with room, which the actors may
                    // hold for good: it would wait for them as long (as in Ray).
                    _ if n == 1 => shoal_protocol::GroupStrategy::StrictSpread,
                    _ => shoal_protocol::GroupStrategy::Spread,
                };
                let g = sim.create_group(d, bundles, strategy);
                groups.push((d, g));
            }
            45..=52 => {
                let restarts = sim.rng().below(3) as u32;
                // Actors hold their CPUs until their driver exits: at least one CPU of the
                // mesh stays for tasks (with none, tasks wait for good, as in Ray).
                let mut cpus = if sim.rng().chance(0.5) { 0.0 } else { 1.0 };
                if cpus > 0.0 && actor_cpus + 1.0 >= total_cpus {
                    cpus = 0.0;
                }
                actor_cpus += cpus;
                // Some under a name, which any driver may look up. (Each its own: names
                // are unique per node, not across the mesh, so two nodes' creations of one
                // name would both live.)
                let a = if sim.rng().chance(0.3) {
                    let name = format!("s{}", actors.len());
                    names.push(name.clone());
                    sim.create_named_actor(d, restarts, cpus, &name, false)
                } else {
                    sim.create_actor(d, restarts, cpus)
                };
                actors.push((d, a));
            }
            53..=55 if !names.is_empty() => {
                // A lookup by name: the handle found is held until released below, or
                // until the driver exits.
                let name = names[sim.rng().below(names.len() as u64) as usize].clone();
                let request = sim.lookup(d, &name);
                lookups.push((d, request));
            }
            53..=79 => {
                if let Some(&(_, a)) = pick(&mut sim, &actors) {
                    let f = if sim.rng().chance(0.05) {
                        "panic"
                    } else if sim.rng().chance(0.2) {
                        // Long enough to be in flight when a worker crashes.
                        "sleep:100"
                    } else {
                        "echo"
                    };
                    for _ in 0..1 + sim.rng().below(5) {
                        let id = sim.call(d, a, f);
                        owned.push((d, id));
                    }
                }
            }
            80..=83 => {
                if sim.rng().chance(0.5) {
                    let size = (1 + sim.rng().below(24)) << 20;
                    let id = sim.put_large(d, size);
                    owned.push((d, id));
                } else if let Some(&(o, id)) = pick(&mut sim, &owned) {
                    sim.get(o, id);
                }
            }
            84..=85 if !groups.is_empty() && sim.rng().chance(0.2) => {
                let k = sim.rng().below(groups.len() as u64) as usize;
                let (o, g) = groups.swap_remove(k);
                sim.remove_group(o, g);
            }
            84..=85 => {
                // A cancel of a task or a call, wherever it is by now (finished, even).
                if let Some(&(o, id)) = pick(&mut sim, &owned) {
                    if sim.task_of(id).is_some() {
                        let force = sim.rng().chance(0.3);
                        sim.cancel(o, id, force, true);
                    }
                }
            }
            86 if !lookups.is_empty() => {
                let k = sim.rng().below(lookups.len() as u64) as usize;
                let (o, request) = lookups.swap_remove(k);
                if let Some((_, Some(h))) = sim.found(o, request) {
                    sim.release(o, h);
                }
            }
            86..=89 => {
                if !owned.is_empty() {
                    let k = sim.rng().below(owned.len() as u64) as usize;
                    let (o, id) = owned.swap_remove(k);
                    sim.release(o, id);
                }
            }
            90..=92 => {
                let (a, b) = two(&mut sim);
                sim.partition(a, b);
            }
            93..=95 => {
                let (a, b) = two(&mut sim);
                sim.heal(a, b);
            }
            96 => {
                let n = sim.rng().below(nodes as u64) as usize;
                sim.crash(n);
            }
            97 => {
                let n = sim.rng().below(nodes as u64) as usize;
                sim.restart(n);
            }
            _ => {
                let n = sim.rng().below(nodes as u64) as usize;
                if sim.alive(n) {
                    sim.crash_a_worker(n);
                }
            }
        }
    }
    // The faults end; every wait must end within the bound.
    for a in 0..nodes {
        for b in 0..nodes {
            sim.heal(a, b);
        }
    }
    for n in 0..nodes {
        sim.restart(n);
    }
    sim.run_for(SETTLE);
    let v = sim.finish(SETTLE);
    (sim, v)
}

fn random_mesh(seed: u64) -> Sim {
    let mut rng = super::Rng::new(seed);
    let nodes = 2 + rng.below(3) as usize;
    let cpus = (0..nodes).map(|_| 1.0 + rng.below(2) as f64).collect();
    Sim::new(
        seed,
        SimConfig {
            nodes,
            cpus,
            store_faults: if rng.chance(0.3) { 0.02 } else { 0.0 },
            ..Default::default()
        },
    )
}

fn pick<'a, T>(sim: &mut Sim, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        return None;
    }
    v.get(sim.rng().below(v.len() as u64) as usize)
}

fn two(sim: &mut Sim) -> (usize, usize) {
    let n = sim.nodes() as u64;
    let a = sim.rng().below(n) as usize;
    let b = (a + 1 + sim.rng().below(n - 1) as usize) % n as usize;
    (a, b)
}

/// Whether `v` is a value (inline or in the store), not an error.
pub fn is_value(v: &ObjectValue) -> bool {
    matches!(v, ObjectValue::Inline(_) | ObjectValue::Shared(_))
}

/// Whether `v` is this error.
pub fn is_error(v: &ObjectValue, f: impl Fn(&TaskError) -> bool) -> bool {
    matches!(v, ObjectValue::Error(e) if f(e))
}
