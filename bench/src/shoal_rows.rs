//! The rows that measure Shoal itself: BENCH.md's "workloads" (tasks and objects, the same
//! work as `ray microbenchmark`, name by name; the actor rows are in
//! [`actor_rows`](crate::actor_rows)) and "the mesh" rows; and one row not in BENCH.md,
//! `single_client_get_view_us_N` (a zero-copy view of an N-byte buffer).
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

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Error, Result};
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
/// Client tasks per batch of the `multi_client_*` put rows (Ray's figure).
const PUT_CLIENTS: u64 = 10;
/// Small puts each client task does per batch of `multi_client_put_calls` (Ray's figure).
const SMALL_PUTS_PER_CLIENT: u64 = 100;
/// Puts each client task does per batch of `multi_client_put_gigabytes` (Ray's figure).
const BIG_PUTS_PER_CLIENT: u64 = 10;
/// The buffer of `multi_client_put_gigabytes`: 80 MB, Ray's `0.1 * 8 / 10` GB per put.
const MULTI_PUT_BYTES: usize = 80_000_000;
/// The same under `--quick`.
const MULTI_PUT_BYTES_QUICK: usize = 8_000_000;
/// The refs inside the object of `single_client_get_object_containing_10k_refs`.
const REFS_IN_OBJECT: u64 = 10_000;
/// Gets per batch of `single_client_get_object_containing_10k_refs`.
const REF_OBJECT_GETS_PER_BATCH: u64 = 10;
/// The default size (bytes) of `single_client_get_view_us_N`.
const VIEW_BYTES_DEFAULT: u64 = 8_000_000;
/// How long the client tasks of a batch may take before the row fails (far above a batch's
/// time: the longest, `multi_client_put_gigabytes`'s 8 GB, takes seconds).
const OP_TIMEOUT: Duration = Duration::from_secs(120);
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
        "multi_client_put_calls",
        Unit::OpsPerSec,
        "10 tasks, each doing 100 puts of distinct small values (refs dropped at once); \
         counted per put",
        multi_put_calls,
    );
    reg.add(
        "multi_client_put_gigabytes",
        Unit::GbPerSec,
        "10 tasks, each putting ten 80 MB buffers (8-byte counter in front, so no put dedups)",
        multi_put_gigabytes,
    );
    reg.add(
        "single_client_tasks_and_get_batch",
        Unit::OpsPerSec,
        "submit 1,000 no-op tasks, then get all; one op = the batch",
        tasks_and_get_batch,
    );
    reg.add(
        "single_client_get_object_containing_10k_refs",
        Unit::OpsPerSec,
        "get of an object (made by a task) that holds 10,000 refs to small puts",
        get_object_containing_10k_refs,
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
    reg.add(
        "cancel_calls",
        Unit::OpsPerSec,
        "submit 1,000 no-op tasks while every CPU is held, cancel each, get each \
         (Cancelled); counted per cancel",
        cancel_calls,
    );
    reg.add(
        "placement_group_create_removal",
        Unit::OpsPerSec,
        "create 100 placement groups of one bundle (0.001 CPU), wait until each is placed, \
         remove them (Ray's row); counted per group",
        placement_group_create_removal,
    );
    // Not in BENCH.md: a large get whose time does not depend on the size (run it as
    // `single_client_get_view_us_N` for an N-byte buffer).
    reg.add_sized(
        "single_client_get_view_us",
        Unit::Micros,
        VIEW_BYTES_DEFAULT,
        "get_view_blocking (a mapped view, no copy) of an N-byte buffer put once beforehand \
         (not in BENCH.md)",
        get_view,
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
        crate::scrape::watch(status.metrics.as_deref());
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
            let (ready, rest) = shoal::wait_blocking(&pending, 1, None)?;
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

/// Holds a CPU until it is cancelled.
#[shoal::remote]
pub(crate) fn hold_cpu() -> u64 {
    let mut turns = 0;
    while !shoal::is_cancelled() {
        std::thread::sleep(Duration::from_millis(1));
        turns += 1;
    }
    turns
}

fn cancel_calls(b: &mut Bench) -> Result<()> {
    let shoal = first_task()?;
    // Every CPU held, so that the tasks cancelled wait in the queue. The holders ask a bit
    // less than a CPU each: a shape of their own, which the scheduler never queues at a
    // worker behind another (it does so with short tasks, and the no-op's shape is one).
    let cpus = shoal
        .status()?
        .resources_total
        .get_milli("CPU")
        .div_ceil(1000);
    let hold = shoal::TaskOptions::new().num_cpus(0.999);
    let holders: Vec<ObjectRef<u64>> = (0..cpus)
        .map(|_| hold_cpu.options(hold.clone()).remote())
        .collect();
    let deadline = Instant::now() + FIRST_OP_TIMEOUT;
    while shoal.status()?.resources_free.get_milli("CPU") >= 1000 {
        ensure!(Instant::now() < deadline, "the CPU holders never all ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cancelled = |r: &ObjectRef<Vec<u8>>| -> Result<()> {
        match r.get_blocking() {
            Err(shoal::GetError::Task(shoal::TaskError::Cancelled { .. })) => Ok(()),
            other => anyhow::bail!("a cancelled queued task gave {other:?}"),
        }
    };
    b.run_batches(|| {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..TASKS_PER_BATCH).map(|_| noop.remote()).collect();
        for r in &refs {
            shoal::cancel(r)?;
        }
        for r in &refs {
            cancelled(r)?;
        }
        Ok(TASKS_PER_BATCH as u64)
    })?;
    for h in &holders {
        shoal::cancel(h)?;
    }
    for h in &holders {
        match h.get_blocking_timeout(OP_TIMEOUT) {
            Err(shoal::GetError::Task(shoal::TaskError::Cancelled { .. })) => {}
            other => anyhow::bail!("a CPU holder gave {other:?}"),
        }
    }
    drain(&shoal)
}

fn placement_group_create_removal(b: &mut Bench) -> Result<()> {
    const GROUPS: usize = 100;
    let shoal = connect()?;
    let bundle = || vec![shoal::ResourceSet::cpus(0.001)];
    b.run_batches(|| {
        let groups: Vec<shoal::PlacementGroup> = (0..GROUPS)
            .map(|_| shoal::placement_group(bundle(), shoal::GroupStrategy::Pack))
            .collect();
        for g in &groups {
            ensure!(
                g.wait(OP_TIMEOUT)?,
                "a placement group was not placed in time"
            );
        }
        for g in &groups {
            shoal::remove_placement_group(g);
        }
        Ok(GROUPS as u64)
    })?;
    drain(&shoal)
}

fn put_calls(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    drop(shoal::put(&0u64).context("the first put")?);
    drain(&shoal)?;
    b.run_batches(|| {
        for _ in 0..SMALL_OPS_PER_BATCH {
            // Each put is a new object; dropping the ref at once releases it, so memory
            // stays flat.
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

fn put_gigabytes(b: &mut Bench) -> Result<()> {
    // `put_bytes` stores what a `Vec<u8>` would (a unit test of the SDK checks it): the
    // buffer of Ray's row is an array, not a list of small values.
    let shoal = connect()?;
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
    // Each put gets new content (an 8-byte counter in front), as when puts were named by
    // their content: every one is encoded and written (a `put` is not hashed).
    let mut counter = 0u64;
    let mut put_once = |buf: &mut Vec<u8>| -> Result<()> {
        counter += 1;
        buf[..8].copy_from_slice(&counter.to_le_bytes());
        // Dropped at once: the node frees it before it handles the next put.
        drop(shoal::put_bytes(buf)?);
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

/// Gets a client task's count (at most `timeout`) and checks it is `expected`.
fn client_count(
    r: &ObjectRef<Result<u64, String>>,
    timeout: Duration,
    expected: u64,
) -> Result<u64> {
    let n = r
        .get_blocking_timeout(timeout)?
        .map_err(Error::msg)
        .context("a client task failed")?;
    ensure!(n == expected, "a client task reported {n}, not {expected}");
    Ok(n)
}

/// Submits [`PUT_CLIENTS`] client tasks made by `submit(first)`, where `first` is the first
/// of the `per_client` values (or counters) that task uses, so that no two puts of a row
/// store the same value; then gets every task's count, each `expected`. Their sum.
fn run_put_clients(
    next: &mut u64,
    per_client: u64,
    expected: u64,
    submit: impl Fn(u64) -> ObjectRef<Result<u64, String>>,
) -> Result<u64> {
    let refs: Vec<ObjectRef<Result<u64, String>>> = (0..PUT_CLIENTS)
        .map(|_| {
            let r = submit(*next);
            *next += per_client;
            r
        })
        .collect();
    let mut total = 0;
    for r in &refs {
        total += client_count(r, OP_TIMEOUT, expected)?;
    }
    Ok(total)
}

/// A client task of `multi_client_put_calls`: puts the `n` values `first..first + n`, each
/// ref dropped at once; how many puts it did. The task's result travels behind its puts and
/// releases, so when the driver has it, the node has taken them all.
#[shoal::remote]
fn small_puts_task(first: u64, n: u64) -> Result<u64, String> {
    for v in first..first + n {
        drop(shoal::put(&v).map_err(|e| format!("put of {v} failed: {e}"))?);
    }
    Ok(n)
}

fn multi_put_calls(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let mut next = 0u64;
    client_count(&small_puts_task.remote(next, 1), FIRST_OP_TIMEOUT, 1)
        .context("the first client task")?;
    next += 1;
    b.run_batches(|| {
        run_put_clients(
            &mut next,
            SMALL_PUTS_PER_CLIENT,
            SMALL_PUTS_PER_CLIENT,
            |first| small_puts_task.remote(first, SMALL_PUTS_PER_CLIENT),
        )
    })?;
    drain(&shoal)
}

thread_local! {
    /// The buffer a worker thread puts in `multi_client_put_gigabytes`: allocated and faulted
    /// in by its first task, reused by the next ones (so that a task measures puts, not page
    /// faults).
    static PUT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A client task of `multi_client_put_gigabytes`: `n` puts of a `size`-byte zeroed buffer,
/// the counters `first..first + n` in its first 8 bytes (so that no put dedups), each ref
/// dropped at once; how many bytes it put.
#[shoal::remote]
fn big_puts_task(first: u64, n: u64, size: u64) -> Result<u64, String> {
    let len = usize::try_from(size).map_err(|_| format!("size {size} too large"))?;
    if len < 8 {
        return Err(format!("size {size} is below the 8-byte counter"));
    }
    PUT_BUFFER.with_borrow_mut(|buf| {
        if buf.len() != len {
            *buf = vec![0u8; len];
            // Faulted in: see `put_gigabytes`.
            std::hint::black_box(&mut *buf).fill(0);
        }
        for counter in first..first + n {
            buf[..8].copy_from_slice(&counter.to_le_bytes());
            drop(shoal::put_bytes(buf).map_err(|e| format!("put {counter} failed: {e}"))?);
        }
        Ok(n * size)
    })
}

fn multi_put_gigabytes(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let size = if b.is_quick() {
        eprintln!(
            "{}: --quick: puts of {MULTI_PUT_BYTES_QUICK} bytes instead of {MULTI_PUT_BYTES}",
            b.name()
        );
        MULTI_PUT_BYTES_QUICK
    } else {
        MULTI_PUT_BYTES
    } as u64;
    let per_client = BIG_PUTS_PER_CLIENT * size;
    let mut next = 0u64;
    client_count(&big_puts_task.remote(next, 1, size), FIRST_OP_TIMEOUT, size)
        .context("the first client task")?;
    next += 1;
    b.run_batches(|| {
        run_put_clients(&mut next, BIG_PUTS_PER_CLIENT, per_client, |first| {
            big_puts_task.remote(first, BIG_PUTS_PER_CLIENT, size)
        })
    })?;
    drain(&shoal)
}

/// The task of `single_client_get_object_containing_10k_refs`: puts the `n` values `0..n`
/// (distinct values: distinct objects, as Ray's `n` puts) and returns the refs.
#[shoal::remote]
fn make_refs_task(n: u64) -> Result<Vec<ObjectRef<u64>>, String> {
    (0..n)
        .map(|v| shoal::put(&v).map_err(|e| format!("put of {v} failed: {e}")))
        .collect()
}

fn get_object_containing_10k_refs(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let object = make_refs_task.remote(REFS_IN_OBJECT);
    let refs = object
        .get_blocking_timeout(FIRST_OP_TIMEOUT)
        .context("the first get (of the task's result)")?
        .map_err(Error::msg)
        .context("the task making the refs failed")?;
    ensure!(
        refs.len() as u64 == REFS_IN_OBJECT,
        "the object holds {} refs, not {REFS_IN_OBJECT}",
        refs.len()
    );
    let last = refs.len() - 1;
    for i in [0, 1, last / 2, last] {
        let v = refs[i]
            .get_blocking_timeout(FIRST_OP_TIMEOUT)
            .with_context(|| format!("getting the value of ref {i}"))?;
        ensure!(v == i as u64, "ref {i} leads to {v}, not {i}");
    }
    let (first_id, last_id) = (refs[0].id(), refs[last].id());
    drop(refs);
    drain(&shoal)?;
    // How long the batches took, and how much of it went to waiting for the node.
    let (mut busy, mut waiting) = (Duration::ZERO, Duration::ZERO);
    b.run_batches(|| {
        let start = Instant::now();
        for _ in 0..REF_OBJECT_GETS_PER_BATCH {
            let refs = object.get_blocking()?.map_err(Error::msg)?;
            ensure!(
                refs.len() as u64 == REFS_IN_OBJECT
                    && refs[0].id() == first_id
                    && refs[last].id() == last_id,
                "a get of the object returned other refs ({} of them)",
                refs.len()
            );
            // Dropped here, in the op: this process releases the 10,000 refs it took.
        }
        // A batch ends when the node has taken this process's holds and releases of the
        // refs (two messages' worth of 10,000 ids per get).
        let gets_done = Instant::now();
        drain(&shoal)?;
        waiting += gets_done.elapsed();
        busy += start.elapsed();
        Ok(REF_OBJECT_GETS_PER_BATCH)
    })?;
    eprintln!(
        "{}: {:.0}% of the time waiting for the node to take the holds and releases",
        b.name(),
        100.0 * waiting.as_secs_f64() / busy.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    drop(object);
    drain(&shoal)
}

/// The byte at position `i` of the buffer of `single_client_get_view_us`.
fn view_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn get_view(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let size = b
        .size()
        .context("single_client_get_view_us runs with a size")?;
    let len = usize::try_from(size).context("the size does not fit in memory")?;
    ensure!(len > 0, "a view of 0 bytes measures nothing");
    let buf: Vec<u8> = (0..len).map(view_byte).collect();
    let object = shoal::put_bytes(&buf).context("putting the buffer")?;
    let back = object
        .get_blocking_timeout(FIRST_OP_TIMEOUT)
        .context("the first get")?;
    ensure!(back.0 == buf, "the stored buffer differs from the one put");
    drop((back, buf));
    let probes = [0, len / 3, len / 2, len - 1];
    let check = |view: &shoal::ByteView| -> Result<()> {
        ensure!(
            view.len() == len,
            "a view of {} bytes, not {len}",
            view.len()
        );
        for i in probes {
            ensure!(
                view[i] == view_byte(i),
                "byte {i} of the view is {}, not {}",
                view[i],
                view_byte(i)
            );
        }
        Ok(())
    };
    let view = object.get_view_blocking().context("the first view")?;
    check(&view)?;
    eprintln!(
        "{}: a view of {len} bytes, {} (each op: get_view_blocking, read {} bytes, drop)",
        b.name(),
        if view.is_mapped() {
            "mapped from shared memory"
        } else {
            "inline (below the inline threshold)"
        },
        probes.len()
    );
    drop(view);
    b.run_timed(|| {
        let start = Instant::now();
        let view = object.get_view_blocking()?;
        check(&view)?;
        drop(view);
        Ok(start.elapsed())
    })?;
    drop(object);
    drain(&shoal)
}
