//! The rows that measure Shoal itself: BENCH.md's "workloads" (tasks and objects, the same
//! work as `ray microbenchmark`, name by name; the actor rows are in
//! [`actor_rows`](crate::actor_rows)) and "the mesh" rows.
//!
//! A row is a function `fn(&mut Bench) -> anyhow::Result<()>` that does its untimed set-up,
//! then measures exactly once (`b.run_batches` for `ops/s` and `GB/s`, `b.run_timed` for `s`
//! and `us`), then tears down; it is registered below under its BENCH.md name and unit.
//!
//! The rows attach this process to a node with [`shoal::init`] (the daemon on `$SHOAL_SOCKET`
//! or the per-user socket if one answers, otherwise a node embedded in this process), once,
//! on first use. The node starts its workers from this very executable: the constructor that
//! `#[shoal::remote]` emits turns such a process into a worker before `main` runs, which is
//! why the remote functions of the rows live here, in the bench crate.
//!
//! Every row first runs one task or operation with a timeout, so that a broken node fails the
//! row instead of hanging the run; the harness's warm-up then starts the workers before the
//! timed rounds. At the end of a row the process waits until the node has handled everything
//! the row sent ([`drain`]), so that no row's backlog is measured by the next one.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use serde::{Serialize, Serializer};
use shoal::ObjectRef;

use crate::harness::{Bench, Registry, Unit};

/// Tasks submitted per batch by the 1,000-task rows (Ray's figure).
const TASKS_PER_BATCH: usize = 1_000;
/// Round trips per batch of `single_client_tasks_sync` (the harness reads the clock once per
/// batch).
const SYNC_TASKS_PER_BATCH: u64 = 100;
/// Puts or gets per batch of the small-object rows.
const SMALL_OPS_PER_BATCH: u64 = 1_000;
/// The buffer of `single_client_put_gigabytes`: 0.8 GB, Ray's `8 * 0.1` GB per put.
const BIG_PUT_BYTES: usize = 800_000_000;
/// The same under `--quick`.
const BIG_PUT_BYTES_QUICK: usize = 100_000_000;
/// How long the first operation of a row may take (it may start a worker) before the row
/// fails.
pub(crate) const FIRST_OP_TIMEOUT: Duration = Duration::from_secs(60);

/// The no-op task: no arguments, returns the 2-byte value `b"ok"`.
#[shoal::remote]
pub(crate) fn noop() -> Vec<u8> {
    b"ok".to_vec()
}

/// Registers Shoal's rows.
pub fn register(reg: &mut Registry) {
    reg.add(
        "single_client_get_calls",
        Unit::OpsPerSec,
        "get of one small object (the value 0, put once beforehand)",
        get_calls,
    );
    reg.add(
        "single_client_put_calls",
        Unit::OpsPerSec,
        "put of the value 0 (the ref dropped at once)",
        put_calls,
    );
    reg.add(
        "single_client_put_gigabytes",
        Unit::GbPerSec,
        "put of an 800 MB zeroed buffer (8-byte counter in front, so no put dedups)",
        put_gigabytes,
    );
    reg.add(
        "single_client_tasks_and_get_batch",
        Unit::OpsPerSec,
        "submit 1,000 no-op tasks, then get all; one op = the batch",
        tasks_and_get_batch,
    );
    reg.add(
        "single_client_wait_1k_refs",
        Unit::OpsPerSec,
        "submit 1,000 no-op tasks, then wait(num_ready=1) on the pending ones until none is; \
         one op = the whole loop",
        wait_1k_refs,
    );
    reg.add(
        "single_client_tasks_sync",
        Unit::OpsPerSec,
        "submit one no-op task and get its result",
        tasks_sync,
    );
    reg.add(
        "single_client_tasks_async",
        Unit::OpsPerSec,
        "submit 1,000 no-op tasks, then get all; counted per task",
        tasks_async,
    );
}

/// Attaches this process to a node (once; later calls return the same attachment) and says
/// on stderr which node it is.
pub(crate) fn connect() -> Result<shoal::Shoal> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ANNOUNCED: AtomicBool = AtomicBool::new(false);
    let shoal = shoal::init().context("attaching to a Shoal node (shoal::init)")?;
    if !ANNOUNCED.swap(true, Ordering::Relaxed) {
        let status = shoal.status().context("asking the node for its status")?;
        eprintln!(
            "shoal: attached to node {} ({}), resources {}, store {} ({} bytes)",
            status.node_id,
            if shoal.is_embedded() {
                "embedded in this process".to_owned()
            } else {
                format!("daemon pid {} on {}", status.pid, status.socket)
            },
            status.resources_total,
            status.store_dir,
            status.objects.store_capacity,
        );
    }
    Ok(shoal)
}

/// Waits until the node has handled every message this process sent before (a status
/// request travels behind them), so that a row's backlog does not spill into the next one.
pub(crate) fn drain(shoal: &shoal::Shoal) -> Result<()> {
    shoal.status().context("waiting for the node to catch up")?;
    Ok(())
}

/// Gets a no-op task's result and checks it.
fn get_ok(r: &ObjectRef<Vec<u8>>) -> Result<()> {
    let v = r.get_blocking()?;
    ensure!(v == b"ok", "a no-op task returned {v:?}, not b\"ok\"");
    Ok(())
}

/// Set-up of the task rows: one no-op task, with a timeout, so that a node that cannot run
/// tasks fails the row instead of hanging it.
fn first_task() -> Result<shoal::Shoal> {
    let shoal = connect()?;
    let v = noop
        .remote()
        .get_blocking_timeout(FIRST_OP_TIMEOUT)
        .context("the first no-op task")?;
    ensure!(
        v == b"ok",
        "the first no-op task returned {v:?}, not b\"ok\""
    );
    Ok(shoal)
}

fn tasks_sync(b: &mut Bench) -> Result<()> {
    let shoal = first_task()?;
    b.run_batches(|| {
        for _ in 0..SYNC_TASKS_PER_BATCH {
            get_ok(&noop.remote())?;
        }
        Ok(SYNC_TASKS_PER_BATCH)
    })?;
    drain(&shoal)
}

/// Submits [`TASKS_PER_BATCH`] no-op tasks, then gets every result in order.
fn submit_and_get_all() -> Result<()> {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..TASKS_PER_BATCH).map(|_| noop.remote()).collect();
    for r in &refs {
        get_ok(r)?;
    }
    Ok(())
}

fn tasks_async(b: &mut Bench) -> Result<()> {
    let shoal = first_task()?;
    b.run_batches(|| {
        submit_and_get_all()?;
        Ok(TASKS_PER_BATCH as u64)
    })?;
    drain(&shoal)
}

fn tasks_and_get_batch(b: &mut Bench) -> Result<()> {
    let shoal = first_task()?;
    b.run_batches(|| {
        submit_and_get_all()?;
        Ok(1)
    })?;
    drain(&shoal)
}

fn wait_1k_refs(b: &mut Bench) -> Result<()> {
    let shoal = first_task()?;
    // How many waits the loops took: Shoal's wait returns every ready ref, not just
    // `num_ready` of them (as Ray's does), so a loop may take fewer than 1,000 waits.
    let (mut loops, mut waits) = (0u64, 0u64);
    b.run_batches(|| {
        let mut pending: Vec<ObjectRef<Vec<u8>>> =
            (0..TASKS_PER_BATCH).map(|_| noop.remote()).collect();
        while !pending.is_empty() {
            let (ready, rest) = shoal::wait_blocking(&pending, 1, None);
            ensure!(
                !ready.is_empty(),
                "wait_blocking(num_ready=1, no timeout) returned no ready ref"
            );
            pending = rest;
            waits += 1;
        }
        loops += 1;
        Ok(1)
    })?;
    eprintln!(
        "{}: {:.1} waits per loop of {TASKS_PER_BATCH} tasks on average ({waits} waits in {loops} loops)",
        b.name(),
        waits as f64 / loops.max(1) as f64
    );
    drain(&shoal)
}

fn put_calls(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    drop(shoal::put(&0u64).context("the first put")?);
    drain(&shoal)?;
    b.run_batches(|| {
        for _ in 0..SMALL_OPS_PER_BATCH {
            // Equal values share one id; dropping the ref at once releases it, so each put
            // stores the value anew and memory stays flat.
            drop(shoal::put(&0u64)?);
        }
        // A batch ends when the node has taken every put and release: the rate is one the
        // node sustains, not the speed of filling the outbox.
        drain(&shoal)?;
        Ok(SMALL_OPS_PER_BATCH)
    })?;
    Ok(())
}

fn get_calls(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let value = shoal::put(&0u64).context("putting the value 0")?;
    let v = value
        .get_blocking_timeout(FIRST_OP_TIMEOUT)
        .context("the first get")?;
    ensure!(v == 0, "the object holds {v}, not 0");
    b.run_batches(|| {
        for _ in 0..SMALL_OPS_PER_BATCH {
            let v = value.get_blocking()?;
            ensure!(v == 0, "the object holds {v}, not 0");
        }
        Ok(SMALL_OPS_PER_BATCH)
    })?;
    drop(value);
    drain(&shoal)
}

/// A byte buffer that serializes with `serialize_bytes`, as `serde_bytes` does: its encoding
/// is exactly that of a `Vec<u8>` with the same bytes (a length, then the bytes), but it is
/// written with one copy instead of element by element.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

fn put_gigabytes(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    // Equal encodings give equal ids: check that `Bytes` stores what a `Vec<u8>` would.
    let sample: Vec<u8> = (0..=255).collect();
    ensure!(
        shoal::put(&Bytes(&sample))?.id() == shoal::put(&sample)?.id(),
        "Bytes does not encode as Vec<u8>"
    );
    let size = if b.is_quick() {
        eprintln!(
            "{}: --quick: puts of {BIG_PUT_BYTES_QUICK} bytes instead of {BIG_PUT_BYTES}",
            b.name()
        );
        BIG_PUT_BYTES_QUICK
    } else {
        BIG_PUT_BYTES
    };
    // Zeroes, faulted in: a fresh `vec![0; n]` is lazily mapped, and reading it would read
    // the kernel's one zero page again and again (cache-hot, faster than any real buffer).
    let mut buf = vec![0u8; size];
    std::hint::black_box(&mut buf).fill(0);
    // Each put gets new content (an 8-byte counter in front), so no put is deduplicated
    // against an earlier one still in the store: every one is encoded, hashed and written.
    let mut counter = 0u64;
    let mut put_once = |buf: &mut Vec<u8>| -> Result<()> {
        counter += 1;
        buf[..8].copy_from_slice(&counter.to_le_bytes());
        // Dropped at once: the node frees it before it handles the next put.
        drop(shoal::put(&Bytes(buf))?);
        Ok(())
    };
    put_once(&mut buf).context("the first put")?;
    drain(&shoal)?;
    b.run_batches(|| {
        put_once(&mut buf)?;
        Ok(size as u64)
    })?;
    drain(&shoal)
}
