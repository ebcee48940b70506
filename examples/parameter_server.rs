//! Ray's parameter server, on Shoal actors.
//!
//! A `ParameterServer` actor holds a vector of parameters (zeros at first). Worker tasks get
//! the server's handle and loop: read the parameters, compute an update, push it. The driver
//! prints the parameters while the workers run, then checks the final values: every update
//! adds `1.0` to every parameter, so each ends at `workers * iters`. Then the same with the
//! vector split across several server actors (shards), each worker reading and updating
//! every shard.
//!
//! Run with: `cargo run --release --example parameter_server [-- --dim N --workers N
//! --iters N --shards N --show-peers]` (defaults: 10, 2, 100, 2). It exits non-zero if a
//! final value is not what the run implies.
//!
//! Across machines, unchanged: start a mesh (`scripts/mesh up 3`), point the program at any
//! of its nodes (`SHOAL_SOCKET=...` as `scripts/mesh up` prints) and add `--show-peers` to
//! see which peer ran each server actor and each worker task.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use shoal::{ActorHandle, ObjectRef};

/// Holds one vector of parameters (or one shard of it).
pub struct ParameterServer {
    params: Vec<f64>,
}

#[shoal::actor]
impl ParameterServer {
    /// `dim` parameters, all zero.
    pub fn new(dim: usize) -> Self {
        ParameterServer {
            params: vec![0.0; dim],
        }
    }

    /// The current parameters.
    pub fn get_params(&self) -> Vec<f64> {
        self.params.clone()
    }

    /// The mesh peer this actor runs on (`None` outside a mesh).
    pub fn peer(&self) -> Option<String> {
        shoal::peer_id()
    }

    /// Adds a gradient to the parameters.
    pub fn update_params(&mut self, grad: Vec<f64>) {
        for (p, g) in self.params.iter_mut().zip(grad) {
            *p += g;
        }
    }
}

/// The update a worker computes from the parameters it read. A stand-in for a real
/// gradient: a vector of ones, so that the final values are known exactly.
fn compute_update(params: &[f64]) -> Vec<f64> {
    vec![1.0; params.len()]
}

/// A worker: `iters` times, read every shard's parameters, compute an update and push each
/// shard its part. Returns the number of updates it pushed, once the last is applied, and
/// the mesh peer it ran on.
#[shoal::remote]
fn worker(servers: Vec<ActorHandle<ParameterServer>>, iters: u32) -> (u32, Option<String>) {
    let mut last: Vec<ObjectRef<()>> = Vec::new();
    for _ in 0..iters {
        last.clear();
        for ps in &servers {
            // Calls from this worker run in the order sent: this read sees its own previous
            // update.
            let params = ps.get_params().get_blocking().expect("read the parameters");
            last.push(ps.update_params(compute_update(&params)));
        }
    }
    for r in &last {
        r.get_blocking().expect("the last update is applied");
    }
    (iters, shoal::peer_id())
}

struct Args {
    dim: usize,
    workers: u32,
    iters: u32,
    shards: usize,
    show_peers: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        dim: 10,
        workers: 2,
        iters: 100,
        shards: 2,
        show_peers: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<String> {
            it.next().with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dim" => args.dim = value()?.parse()?,
            "--workers" => args.workers = value()?.parse()?,
            "--iters" => args.iters = value()?.parse()?,
            "--shards" => args.shards = value()?.parse()?,
            "--show-peers" => args.show_peers = true,
            "-h" | "--help" => {
                println!(
                    "usage: parameter_server [--dim N] [--workers N] [--iters N] [--shards N] \
                     [--show-peers]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (try --help)"),
        }
    }
    ensure!(args.dim > 0, "--dim must be positive");
    ensure!(
        args.shards > 0 && args.shards <= args.dim,
        "--shards must be between 1 and --dim"
    );
    Ok(args)
}

/// Starts the workers against `servers`, prints the parameters while they run, and checks
/// the final values.
fn run(title: &str, servers: Vec<ActorHandle<ParameterServer>>, args: &Args) -> anyhow::Result<()> {
    println!(
        "== {title}: {} server actor(s), {} workers, {} iterations",
        servers.len(),
        args.workers,
        args.iters
    );
    let read_all = |servers: &[ActorHandle<ParameterServer>]| -> anyhow::Result<Vec<f64>> {
        let parts: Vec<ObjectRef<Vec<f64>>> = servers.iter().map(|s| s.get_params()).collect();
        let mut all = Vec::new();
        for p in parts {
            all.extend(p.get_blocking()?);
        }
        Ok(all)
    };
    if args.show_peers {
        for (i, s) in servers.iter().enumerate() {
            let peer = s
                .peer()
                .get_blocking()?
                .unwrap_or_else(|| "(no mesh)".into());
            println!("  server {i} runs on peer {peer}");
        }
    }
    let workers: Vec<ObjectRef<(u32, Option<String>)>> = (0..args.workers)
        .map(|_| worker.remote(servers.clone(), args.iters))
        .collect();
    // Watch the values grow until every worker is done.
    let mut pending = workers.clone();
    let mut shown = None;
    while !pending.is_empty() {
        let (_, rest) =
            shoal::wait_blocking(&pending, pending.len(), Some(Duration::from_millis(20)))?;
        pending = rest;
        let params = read_all(&servers)?;
        let head = params[..params.len().min(3)].to_vec();
        if shown.as_ref() != Some(&head) {
            println!("  params[..3] = {head:?}");
            shown = Some(head);
        }
    }
    let mut updates = 0u64;
    for (i, w) in workers.iter().enumerate() {
        let (n, peer) = w.get_blocking().context("a worker failed")?;
        updates += u64::from(n);
        if args.show_peers {
            let peer = peer.unwrap_or_else(|| "(no mesh)".into());
            println!("  worker {i} ran on peer {peer}");
        }
    }
    let params = read_all(&servers)?;
    let expected = updates as f64;
    println!(
        "  final params[..3] = {:?} (expected {expected} everywhere)",
        &params[..params.len().min(3)]
    );
    ensure!(
        params.len() == args.dim,
        "{} parameters, expected {}",
        params.len(),
        args.dim
    );
    if let Some((i, v)) = params.iter().enumerate().find(|(_, v)| **v != expected) {
        bail!("{title}: parameter {i} is {v}, expected {expected}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    shoal::init()?;

    // One server.
    let server = ParameterServer::remote(args.dim);
    run("one parameter server", vec![server], &args)?;

    // The vector split across `shards` servers, as evenly as it goes.
    let shards: Vec<ActorHandle<ParameterServer>> = (0..args.shards)
        .map(|i| {
            let len = args.dim / args.shards + usize::from(i < args.dim % args.shards);
            ParameterServer::remote(len)
        })
        .collect();
    run("sharded parameter server", shards, &args)?;
    println!("ok");
    Ok(())
}
