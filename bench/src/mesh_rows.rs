//! The mesh rows of BENCH.md ("the mesh" table) that need no task to run on another node,
//! and the idle cost of a peer that issue 5 asks for:
//!
//! - `mesh_converge_seconds_N`: N **in-process peers over TCP loopback** (one tokio runtime,
//!   `shoal_node::net` with [`TransportKind::Tcp`] on `/ip4/127.0.0.1/tcp/0`, mDNS off, all
//!   bootstrapped from the first) started together, until each sees all the others with a
//!   load report from each. Each operation builds a runtime of its own and shuts it down
//!   afterwards, so the peers of earlier operations are gone (their tasks, sockets and
//!   timers with them).
//! - `swim_membership_converge_seconds_N` (N = 20 by default): the same with membership by
//!   SWIM ([`NetConfig::swim`]), until every peer counts all N members up. Membership only:
//!   the load reports still go through gossipsub, and at 100 peers in one process they do
//!   not all arrive (that is `mesh_converge_seconds_100`; issue 15 part 2 replaces them).
//! - `libp2p_stream_gigabytes`: two peers (`shoal_node::net`, TCP loopback) in two processes,
//!   as two nodes are: the sender in this one, the receiver in a child (`shoal-bench
//!   __libp2p_sink <mesh>`, a tokio runtime of its own); one operation is a [`bulk::send`] of
//!   1 GiB (256 MiB under `--quick`) over a new `/shoal/<mesh>/bulk/1` stream, acknowledged by
//!   the receiver. The limit that `object_transfer_gigabytes` (one object pulled between two
//!   node processes, over one such stream) is judged against.
//! - `sealed_lane_gigabytes`: the node's sealed lane ([`net::lane`]: TCP, AES-256-GCM
//!   frames) between two processes, with no file and no hash at either end: the sender is a
//!   child (`shoal-bench __lane_source`) that owns a lane, as a holder does, and sends a
//!   pattern; this process connects with the offer's ticket and opens every frame. One
//!   operation is 1 GiB (256 MiB under `--quick`) under a fresh offer, timed from the ask to
//!   the last frame opened. The fastest authenticated, encrypted channel between two
//!   processes here, that `object_transfer_gigabytes` is judged against.
//! - `failure_detect_seconds`: a mesh of [`FAILURE_MESH_NODES`] real `shoal node` processes
//!   ([`shoal_tests::Mesh`]); one operation SIGKILLs one peer and polls the others' `shoal
//!   status --json` until none lists it. The victim is then restarted with the same identity
//!   and the mesh waited on until it has converged again (untimed).
//! - `swim_failure_detect_seconds`: the same with `--membership swim`.
//! - `idle_peer_cpu_percent_N`, `idle_peer_rss_megabytes_N`,
//!   `idle_peer_gossip_bytes_per_second_N` (not in BENCH.md; N = 50 by default): N real
//!   `shoal node` processes (1 CPU and a 64 MiB store each) left idle; one of them is
//!   observed: its CPU time (`utime + stime` of `/proc/<pid>/stat`) per second of wall time
//!   in percent of one CPU, its resident memory (`VmRSS` of `/proc/<pid>/status`, in 10^6
//!   bytes), and the load-report bytes it sent and received (`gossip.bytes_out + bytes_in`
//!   of `shoal status --json`: payloads, before libp2p's framing) per second. The three
//!   rows share one mesh when run one after the other (see [`before_row`]); any other row
//!   stops it first, so that idle peers never burn CPU under another row's measurement.
//!
//! - `code_ship_seconds`: two in-process peers (TCP loopback, one tokio runtime, so both
//!   ends share this process's CPUs). The fetcher holds a first build of a program (this
//!   executable, fetched whole from the other peer, untimed); each operation makes a
//!   "rebuild" of it (bytes inserted near the start, so that everything after moves, and a
//!   few overwritten in the middle), which the other peer serves signed, and times the
//!   fetch of the rebuild: its chunk index, the chunks the fetcher lacks, and the checks.
//!   The holder makes a binary's index when it starts serving it (when its driver attaches,
//!   before any peer is sent a task of it): that is waited for before the clock starts, and
//!   its mean time is printed.
//!
//! Everything waits with a deadline: a mesh that does not converge, a transfer that stalls or
//! a peer that is never dropped fails the row instead of hanging the run.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use libp2p::{identity, Multiaddr};
use shoal_node::net::{self, bulk, NetConfig, NetHandle, Protocols, TransportKind};
use shoal_tests::{KillOnDrop, Mesh, NodeOptions, NodeProcess};

use crate::harness::{Bench, Registry, Unit};
use crate::limits::{die_with_parent, FINISH_TIMEOUT};

/// The N of `mesh_converge_seconds` when none is given.
const CONVERGE_DEFAULT_PEERS: u64 = 10;
/// The N of `swim_membership_converge_seconds` when none is given.
const SWIM_CONVERGE_DEFAULT_PEERS: u64 = 20;
/// How often the in-process waits look at the peers' views.
const INPROC_POLL: Duration = Duration::from_millis(10);
/// The bytes of one `libp2p_stream_gigabytes` operation.
const STREAM_BYTES: u64 = 1 << 30;
/// The same under `--quick`.
const STREAM_BYTES_QUICK: u64 = 256 << 20;
/// The buffer `bulk::send` writes again and again.
const STREAM_CHUNK: usize = 1 << 20;
/// How long one bulk transfer may take before the row fails (1 GiB at 10 MB/s).
const STREAM_TIMEOUT: Duration = Duration::from_secs(100);
/// How long two in-process peers may take to connect, or a stream to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The size of the mesh of `failure_detect_seconds`: the victim and three observers.
const FAILURE_MESH_NODES: usize = 4;
/// `--failure-timeout` of its nodes (the node's default).
const FAILURE_TIMEOUT_SECS: f64 = 3.0;
/// How long a killed peer may stay in a view before the row fails.
const DETECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mesh of a few processes may take to converge (again) before the row fails.
const PROCESS_CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The N of the idle rows when none is given.
const IDLE_DEFAULT_PEERS: u64 = 50;
/// `--store-bytes` of each idle peer.
const IDLE_STORE_BYTES: u64 = 64 << 20;
/// How long the idle peers may take to start (all of them at once) and to answer.
const IDLE_STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the idle mesh may take to converge; after that it is measured as it is, and the
/// views it reached are reported.
const IDLE_CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// The pause between two sweeps of `shoal status` over the idle peers while they converge
/// (each sweep starts one `shoal status` per peer).
const IDLE_SWEEP_PAUSE: Duration = Duration::from_millis(500);
/// How long the idle mesh is left alone after converging before the first measurement.
const IDLE_SETTLE: Duration = Duration::from_secs(5);
/// The same under `--quick`.
const IDLE_SETTLE_QUICK: Duration = Duration::from_secs(1);
/// How long an idle row observes its peer in all (spread over the rounds; not under
/// `--quick`, whose rounds are the harness's).
const IDLE_OBSERVATION: Duration = Duration::from_secs(10);
/// How often the RSS row reads `VmRSS` within a round.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Registers the mesh rows.
pub fn register(reg: &mut Registry) {
    reg.add_sized(
        "mesh_converge_seconds",
        Unit::Seconds,
        CONVERGE_DEFAULT_PEERS,
        "N in-process peers over TCP loopback (one tokio runtime, mDNS off, all bootstrapped \
         from the first) started together, until each sees all the others with a load report",
        mesh_converge_seconds,
    );
    reg.add_sized(
        "swim_membership_converge_seconds",
        Unit::Seconds,
        SWIM_CONVERGE_DEFAULT_PEERS,
        "N in-process peers over TCP loopback with membership by SWIM (one tokio runtime, \
         mDNS off, all bootstrapped from the first) started together, until each counts N \
         members up",
        swim_membership_converge_seconds,
    );
    reg.add(
        "swim_failure_detect_seconds",
        Unit::Seconds,
        "in a mesh of 4 real `shoal node --membership swim` processes on loopback, one \
         killed with SIGKILL: until no other lists it in `shoal status --json`",
        |b| failure_detect(b, true),
    );
    reg.add(
        "failure_detect_seconds",
        Unit::Seconds,
        "in a mesh of 4 real `shoal node` processes on loopback (--failure-timeout 3), one \
         killed with SIGKILL: until no other lists it in `shoal status --json`",
        failure_detect_seconds,
    );
    reg.add(
        "libp2p_stream_gigabytes",
        Unit::GbPerSec,
        "1 GiB over a bare libp2p stream (the bulk protocol: Noise + Yamux over TCP loopback) \
         between two peers in two processes, acknowledged by the receiver",
        libp2p_stream_gigabytes,
    );
    reg.add(
        "sealed_lane_gigabytes",
        Unit::GbPerSec,
        "1 GiB over the node's sealed lane (TCP loopback, AES-256-GCM frames) from a child \
         process to this one, no file and no hash at either end",
        sealed_lane_gigabytes,
    );
    reg.add(
        "code_ship_seconds",
        Unit::Seconds,
        "a rebuilt program (this executable, changed near its start and in its middle) \
         fetched by an in-process peer that holds the previous build, over TCP loopback",
        code_ship_seconds,
    );
    reg.add_sized(
        "idle_peer_cpu_percent",
        Unit::Percent,
        IDLE_DEFAULT_PEERS,
        "CPU time of one idle `shoal node` process in a mesh of N on loopback, in % of one \
         CPU (not in BENCH.md)",
        idle_peer_cpu_percent,
    );
    reg.add_sized(
        "idle_peer_rss_megabytes",
        Unit::Megabytes,
        IDLE_DEFAULT_PEERS,
        "resident memory (VmRSS) of one idle `shoal node` process in a mesh of N on loopback, \
         in 10^6 bytes (not in BENCH.md)",
        idle_peer_rss_megabytes,
    );
    reg.add_sized(
        "idle_peer_gossip_bytes_per_second",
        Unit::BytesPerSec,
        IDLE_DEFAULT_PEERS,
        "load-report bytes (payloads) one idle `shoal node` process sends and receives per \
         second in a mesh of N on loopback (not in BENCH.md)",
        idle_peer_gossip_bytes_per_second,
    );
    reg.add_sized(
        "swim_idle_peer_cpu_percent",
        Unit::Percent,
        IDLE_DEFAULT_PEERS,
        "CPU time of one idle `shoal node --membership swim` process (loads sampled) in a mesh \
         of N on loopback, in % of one CPU (issue 15's idle_peer_cpu_percent_N)",
        |b| idle_row(b, Idle::Cpu, true),
    );
    reg.add_sized(
        "swim_idle_peer_rss_megabytes",
        Unit::Megabytes,
        IDLE_DEFAULT_PEERS,
        "resident memory (VmRSS) of one idle `shoal node --membership swim` process in a mesh \
         of N on loopback, in 10^6 bytes",
        |b| idle_row(b, Idle::Rss, true),
    );
    reg.add_sized(
        "swim_idle_peer_gossip_bytes_per_second",
        Unit::BytesPerSec,
        IDLE_DEFAULT_PEERS,
        "membership and load bytes (SWIM frames, loads riding on them, and any gossiped \
         report) one idle `shoal node --membership swim` process sends and receives per second \
         in a mesh of N on loopback (issue 15's idle_peer_gossip_bytes_per_second_N)",
        |b| idle_row(b, Idle::Gossip, true),
    );
}

// ---------------------------------------------------------------------------------------------
// In-process peers

/// A mesh name used by nothing else: `bench-<what>-<pid>-<n>`.
pub(crate) fn unique_mesh(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "bench-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The worker threads of the runtime of in-process peers: one per CPU.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |p| p.get())
}

/// A tokio runtime for in-process peers.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .thread_name("bench-mesh")
        .build()
        .context("building a tokio runtime")
}

/// Runs `work` on `rt`, failing if it takes longer than `limit`.
fn block_on_within<T>(
    rt: &tokio::runtime::Runtime,
    limit: Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    // The timer is made inside the runtime: it needs the runtime's time driver.
    rt.block_on(async { tokio::time::timeout(limit, work).await })
        .map_err(|_| anyhow::anyhow!("{what} took over {limit:?}"))?
}

/// Shuts a runtime of in-process peers down: every peer's task, connection and timer ends.
fn shut_down(rt: tokio::runtime::Runtime) {
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// The environment variable that gives the sink child the mesh's join token.
const SINK_TOKEN_ENV: &str = "SHOAL_BENCH_SINK_TOKEN";

/// Starts a peer of `mesh` over TCP on an ephemeral loopback port, mDNS off, bootstrapped
/// from `peers`, with the node's defaults otherwise.
async fn start_peer(mesh: &str, peers: Vec<Multiaddr>) -> Result<NetHandle> {
    start_peer_with(mesh, peers, false).await
}

/// [`start_peer`], with membership by SWIM if `swim`.
async fn start_peer_with(mesh: &str, peers: Vec<Multiaddr>, swim: bool) -> Result<NetHandle> {
    // The sink child is given its parent's token: a mesh's authority is made once per
    // process, so its own would be another mesh's.
    let token = match std::env::var(SINK_TOKEN_ENV) {
        Ok(text) => shoal_node::auth::JoinToken::from_text(&text)
            .with_context(|| format!("${SINK_TOKEN_ENV}"))?,
        Err(_) => shoal_node::auth::testing::token(mesh),
    };
    let mut config = NetConfig::new(token);
    config.transport = TransportKind::Tcp;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.peers = peers;
    config.mdns = false;
    if swim {
        config.swim = Some(shoal_node::core::swim::SwimConfig::default());
    }
    net::start(identity::Keypair::generate_ed25519(), config)
        .await
        .context("starting an in-process peer")
}

/// `code_ship_seconds`: see the module documentation.
fn code_ship_seconds(b: &mut Bench) -> Result<()> {
    use shoal_node::auth::code::Publisher;
    use shoal_protocol::BinaryId;
    let rt = runtime()?;
    let exe = std::env::current_exe().context("this executable")?;
    let first = std::fs::read(&exe).context("reading this executable")?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-code-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = rt.block_on(async {
        let mesh = unique_mesh("code");
        let publisher = Publisher::generate();
        let holder = start_peer(&mesh, Vec::new()).await?;
        let at = listen_addr(&holder, Instant::now() + Duration::from_secs(30)).await?;
        let fetcher = start_peer_trusting(&mesh, vec![at], &publisher).await?;
        let target = net::target();
        let serve = |id: BinaryId, path: &Path| {
            let manifest = publisher.sign(id.0, &target, 1).encode();
            holder.serve_binary(id, path.to_path_buf(), Some(manifest));
            holder
                .servable()
                .grant(&id, fetcher.peer_id(), Instant::now());
        };
        let first_id = BinaryId(shoal_node::store::digest(&first).0);
        serve(first_id, &exe);
        let start = Instant::now();
        fetch_within(&fetcher, holder.peer_id(), first_id).await?;
        eprintln!(
            "{}: the first build ({} bytes) fetched whole in {:.3} s",
            b.name(),
            first.len(),
            start.elapsed().as_secs_f64()
        );
        let mut k = 0u64;
        let mut sent = 0u64;
        let mut index_time = Duration::ZERO;
        let before = fetcher.code_fetched_bytes();
        let m = b.run_timed(|| {
            k += 1;
            let mut rebuilt = first.clone();
            let at = 4096 + (k as usize * 7919) % 65536;
            rebuilt.splice(at..at, format!("rebuild {k}").repeat(64).into_bytes());
            let middle = rebuilt.len() / 2 + (k as usize * 104_729) % 1_000_000;
            rebuilt[middle..middle + 64].fill(k as u8);
            let path = dir.join(format!("rebuild-{k}"));
            std::fs::write(&path, &rebuilt)?;
            let id = BinaryId(shoal_node::store::digest(&rebuilt).0);
            serve(id, &path);
            // The holder indexes a binary when its driver attaches, before the driver's
            // first task goes to a peer: that is done before the clock starts.
            let indexed = Instant::now();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(holder.servable().index(&id))
            })
            .context("the rebuild is not served")?
            .context("indexing the rebuild")?;
            index_time += indexed.elapsed();
            let start = Instant::now();
            let got = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(fetch_within(
                    &fetcher,
                    holder.peer_id(),
                    id,
                ))
            })?;
            let took = start.elapsed();
            ensure!(
                std::fs::read(&got)? == rebuilt,
                "the fetched rebuild differs from the one served"
            );
            std::fs::remove_file(&path)?;
            Ok(took)
        });
        sent += fetcher.code_fetched_bytes() - before;
        m?;
        eprintln!(
            "{}: {k} rebuilds, {:.1} KB sent each on average (of {} bytes); the holder \
             indexed each in {:.3} s on average (untimed)",
            b.name(),
            sent as f64 / k.max(1) as f64 / 1e3,
            first.len(),
            index_time.as_secs_f64() / k.max(1) as f64
        );
        Ok(())
    });
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
    shut_down(rt);
    result
}

/// A peer as [`start_peer`] starts one, that runs binaries `publisher` signed.
async fn start_peer_trusting(
    mesh: &str,
    peers: Vec<Multiaddr>,
    publisher: &shoal_node::auth::code::Publisher,
) -> Result<NetHandle> {
    let mut config = NetConfig::new(shoal_node::auth::testing::token(mesh));
    config.transport = TransportKind::Tcp;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.peers = peers;
    config.mdns = false;
    config.code_policy.trusted = vec![publisher.public()];
    net::start(identity::Keypair::generate_ed25519(), config)
        .await
        .context("starting an in-process peer")
}

/// Fetches binary `id` from `holder` (connecting first, if need be), within a minute.
async fn fetch_within(
    fetcher: &NetHandle,
    holder: libp2p::PeerId,
    id: shoal_protocol::BinaryId,
) -> Result<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match fetcher.fetch_binary(holder, id).await {
            Ok(path) => return Ok(path),
            // (Not connected yet, say.)
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("fetching a binary"),
        }
    }
}

/// The first listen address of a peer (with `/p2p/<id>`), once it listens.
async fn listen_addr(peer: &NetHandle, deadline: Instant) -> Result<Multiaddr> {
    loop {
        if let Some(addr) = peer.view().listen_addrs.first() {
            return addr
                .parse()
                .with_context(|| format!("a listen address {addr:?}"));
        }
        if Instant::now() >= deadline {
            bail!("peer {} did not listen in time", peer.peer_id());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How many of the other peers (`ids`, `me` being this one's index) `peer` sees with a load
/// report.
fn seen_with_report(peer: &NetHandle, me: usize, ids: &[String]) -> usize {
    let view = peer.view();
    let seen: HashSet<&str> = view
        .peers
        .iter()
        .filter(|p| p.report.is_some())
        .map(|p| p.peer_id.as_str())
        .collect();
    ids.iter()
        .enumerate()
        .filter(|&(j, id)| j != me && seen.contains(id.as_str()))
        .count()
}

/// Waits until every peer sees every other with a load report; returns when that was first
/// observed. Fails after `deadline` with how far each peer got.
async fn wait_full_views(peers: &[NetHandle], deadline: Instant) -> Result<Instant> {
    let n = peers.len();
    let ids: Vec<String> = peers.iter().map(|p| p.peer_id().to_string()).collect();
    let full = |i: usize| seen_with_report(&peers[i], i, &ids) == n - 1;
    // The peers before `next` were seen with full views: each sweep starts at the first that
    // was not, and a last sweep over all confirms (a view may lose a peer in between).
    let mut next = 0;
    loop {
        while next < n && full(next) {
            next += 1;
        }
        if next == n {
            if (0..n).all(full) {
                return Ok(Instant::now());
            }
            next = 0;
        }
        if Instant::now() >= deadline {
            let counts: Vec<usize> = (0..n)
                .map(|i| seen_with_report(&peers[i], i, &ids))
                .collect();
            let done = counts.iter().filter(|&&c| c == n - 1).count();
            bail!(
                "{done} of {n} peers have full views; each sees this many of the other {} with a \
                 load report: {counts:?}",
                n - 1
            );
        }
        tokio::time::sleep(INPROC_POLL).await;
    }
}

/// The number of open file descriptors of this process (to show that the peers of earlier
/// operations are gone).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// One operation of `mesh_converge_seconds_N`: a fresh runtime, N peers started (the first,
/// then the others bootstrapped from its address), until full views; then everything torn
/// down. Returns the time from the first peer's start to full views.
fn converge_once(n: usize, timeout: Duration, swim: bool) -> Result<Duration> {
    let rt = runtime()?;
    let mesh = unique_mesh("converge");
    // A backstop: the waits below have their deadline, but a peer that never starts would not.
    let backstop = timeout + Duration::from_secs(5);
    let took = block_on_within(&rt, backstop, "an operation", async {
        let start = Instant::now();
        let deadline = start + timeout;
        let first = start_peer_with(&mesh, Vec::new(), swim).await?;
        let bootstrap = listen_addr(&first, deadline).await?;
        let mut peers = Vec::with_capacity(n);
        peers.push(first);
        for _ in 1..n {
            peers.push(start_peer_with(&mesh, vec![bootstrap.clone()], swim).await?);
        }
        let done = if swim {
            wait_members_up(&peers, deadline).await
        } else {
            wait_full_views(&peers, deadline).await
        }
        .with_context(|| format!("{n} in-process peers did not converge within {timeout:?}"))?;
        anyhow::Ok(done - start)
    });
    shut_down(rt);
    took
}

fn mesh_converge_seconds(b: &mut Bench) -> Result<()> {
    converge_rows(b, false)
}

fn swim_membership_converge_seconds(b: &mut Bench) -> Result<()> {
    converge_rows(b, true)
}

/// Waits until every peer's membership counts all of them up; returns when that was first
/// observed. Fails after `deadline` with how far each peer got.
async fn wait_members_up(peers: &[NetHandle], deadline: Instant) -> Result<Instant> {
    let n = peers.len();
    let up = |p: &NetHandle| p.view().swim.map_or(0, |s| s.members_up as usize);
    loop {
        if peers.iter().all(|p| up(p) == n) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            let counts: Vec<usize> = peers.iter().map(up).collect();
            bail!("members up as each peer counts them (of {n}): {counts:?}");
        }
        tokio::time::sleep(INPROC_POLL).await;
    }
}

fn converge_rows(b: &mut Bench, swim: bool) -> Result<()> {
    let n = b.size().context("the row runs with a size")?;
    ensure!(n >= 2, "a mesh of {n} peer(s) has nothing to converge");
    let n = usize::try_from(n).context("N too large")?;
    let timeout = Duration::from_secs(30 + 2 * n as u64);
    eprintln!(
        "{}: {n} in-process peers over TCP loopback in one tokio runtime ({} worker threads), \
         a new runtime per operation; each operation may take {timeout:?}",
        b.name(),
        worker_threads(),
    );
    let fds_before = open_fds();
    let (mut fastest, mut slowest) = (Duration::MAX, Duration::ZERO);
    let mut ops = 0u32;
    b.run_timed(|| {
        let took = converge_once(n, timeout, swim)?;
        fastest = fastest.min(took);
        slowest = slowest.max(took);
        ops += 1;
        Ok(took)
    })?;
    eprintln!(
        "{}: {ops} operations, fastest {:.3} s, slowest {:.3} s; open file descriptors {} \
         before, {} after",
        b.name(),
        fastest.as_secs_f64(),
        slowest.as_secs_f64(),
        fds_before,
        open_fds()
    );
    Ok(())
}

fn libp2p_stream_gigabytes(b: &mut Bench) -> Result<()> {
    let total = if b.is_quick() {
        eprintln!(
            "{}: --quick: transfers of {STREAM_BYTES_QUICK} bytes instead of {STREAM_BYTES}",
            b.name()
        );
        STREAM_BYTES_QUICK
    } else {
        STREAM_BYTES
    };
    let rt = runtime()?;
    let result = stream_rounds(b, &rt, total);
    shut_down(rt);
    result
}

/// The set-up and the measurement of `libp2p_stream_gigabytes`, on `rt`: the sending peer
/// runs here, the receiving one in a child process ([`SINK_CMD`]).
fn stream_rounds(b: &mut Bench, rt: &tokio::runtime::Runtime, total: u64) -> Result<()> {
    let mesh = unique_mesh("stream");
    let protocol = Protocols::for_mesh(&mesh)?.bulk;
    let mut sink = StreamSink::start(&mesh)?;
    let addr = sink.addr.clone();
    let to = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => id,
        _ => bail!("the sink's address {addr} does not end in /p2p/<peer id>"),
    };
    let setup = CONNECT_TIMEOUT + Duration::from_secs(5);
    let sender = block_on_within(rt, setup, "starting the sending peer", async {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let sender = start_peer(&mesh, vec![addr.clone()]).await?;
        let id = to.to_string();
        while !sender
            .view()
            .peers
            .iter()
            .any(|p| p.peer_id == id && p.connected)
        {
            if Instant::now() >= deadline {
                bail!("the two peers did not connect within {CONNECT_TIMEOUT:?}");
            }
            tokio::time::sleep(INPROC_POLL).await;
        }
        anyhow::Ok(sender)
    })?;
    eprintln!(
        "{}: sending peer in this process, receiving peer {to} in a child process (pid {})",
        b.name(),
        sink.child.child_mut().id()
    );
    let control = sender.streams();
    let chunk = std::sync::Arc::new(vec![0xA5u8; STREAM_CHUNK]);
    // Each transfer runs as a task of the runtime (as a node's transfers do), not on this
    // thread.
    let transfer = |bytes: u64| -> Result<u64> {
        let (mut control, protocol, chunk) = (control.clone(), protocol.clone(), chunk.clone());
        let task = rt.spawn(async move {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, control.open_stream(to, protocol))
                .await
                .context("opening a bulk stream timed out")?
                .context("opening a bulk stream")?;
            let acked = tokio::time::timeout(STREAM_TIMEOUT, bulk::send(stream, bytes, &chunk))
                .await
                .with_context(|| {
                    format!("a transfer of {bytes} bytes took over {STREAM_TIMEOUT:?}")
                })?
                .context("the bulk transfer")?;
            ensure!(
                acked == bytes,
                "the receiver acknowledged {acked} bytes of {bytes}"
            );
            anyhow::Ok(bytes)
        });
        rt.block_on(task).context("the transfer task")?
    };
    transfer(STREAM_CHUNK as u64).context("the first (1 MiB) transfer")?;
    b.run_batches(|| transfer(total))?;
    drop(sender);
    sink.finish()
}

/// The hidden subcommand of the receiving peer of `libp2p_stream_gigabytes`.
const SINK_CMD: &str = "__libp2p_sink";

/// The receiving peer of `libp2p_stream_gigabytes`: `shoal-bench __libp2p_sink <mesh>`, a
/// peer of the mesh in a process of its own, which answers bulk streams (every peer does).
/// Killed on drop.
struct StreamSink {
    child: KillOnDrop,
    /// Its listen address, with `/p2p/<peer id>`.
    addr: Multiaddr,
}

impl StreamSink {
    fn start(mesh: &str) -> Result<StreamSink> {
        let exe = std::env::current_exe().context("finding the shoal-bench executable")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args([SINK_CMD, mesh])
            .env(
                SINK_TOKEN_ENV,
                shoal_node::auth::testing::token(mesh).to_text(),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut child = KillOnDrop::spawn("libp2p sink child", &mut cmd)?;
        let stdout = child
            .child_mut()
            .stdout
            .take()
            .context("the sink's stdout")?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(stdout);
            let read = std::io::BufRead::read_line(&mut reader, &mut line).map(|_| line);
            // The receiver gave up waiting (and says so) if this send fails.
            if tx.send(read).is_err() {
                eprintln!("the libp2p sink child's address came after the bench stopped waiting");
            }
        });
        let line = rx
            .recv_timeout(CONNECT_TIMEOUT)
            .map_err(|_| anyhow::anyhow!("the libp2p sink child did not start in time"))?
            .context("reading the libp2p sink child's address")?;
        child.ensure_running()?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("the libp2p sink child said {line:?}"))?
            .parse()
            .with_context(|| format!("the libp2p sink child's address in {line:?}"))?;
        Ok(StreamSink { child, addr })
    }

    /// Closes its stdin (its signal to stop) and checks that it exits successfully.
    fn finish(mut self) -> Result<()> {
        drop(self.child.child_mut().stdin.take());
        self.child.finish(FINISH_TIMEOUT)
    }
}

/// Runs a hidden subcommand of this module if `args` (without the program name) names one;
/// `None` otherwise.
pub fn run_hidden(args: &[OsString]) -> Option<Result<()>> {
    if args.first()?.to_str()? == LANE_CMD {
        return Some(die_with_parent().and_then(|()| lane_source()));
    }
    if args.first()?.to_str()? != SINK_CMD {
        return None;
    }
    let result = die_with_parent().and_then(|()| match &args[1..] {
        [mesh] => stream_sink(mesh.to_str().context("the mesh name is not UTF-8")?),
        _ => Err(anyhow::anyhow!("usage: shoal-bench {SINK_CMD} <mesh>")),
    });
    Some(result)
}

/// `__libp2p_sink <mesh>`: a peer of `mesh` on a loopback port; prints `listening <addr>`,
/// then serves until stdin reaches end-of-file.
fn stream_sink(mesh: &str) -> Result<()> {
    let rt = runtime()?;
    let result = (|| {
        let peer = block_on_within(&rt, CONNECT_TIMEOUT, "starting the peer", async {
            let peer = start_peer(mesh, Vec::new()).await?;
            let addr = listen_addr(&peer, Instant::now() + CONNECT_TIMEOUT).await?;
            anyhow::Ok((peer, addr))
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", peer.1).and_then(|()| out.flush())?;
        drop(out);
        let mut sink = Vec::new();
        std::io::stdin().lock().read_to_end(&mut sink)?;
        drop(peer);
        Ok(())
    })();
    shut_down(rt);
    result
}

// ---------------------------------------------------------------------------------------------
// The sealed lane

/// The hidden subcommand of the sending side of `sealed_lane_gigabytes`.
const LANE_CMD: &str = "__lane_source";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Result<[u8; N]> {
    ensure!(text.len() == 2 * N, "{text:?} is not {N} bytes in hex");
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{text:?} is not hex"))?;
    }
    Ok(out)
}

/// `__lane_source`: a lane on a loopback port. For each line `send <bytes>` on stdin, makes
/// an offer, prints it (`offer <port> <ticket> <key>`, hex), waits for its connection and
/// sends that many bytes of a pattern on it; ends at end-of-file.
fn lane_source() -> Result<()> {
    let rt = runtime()?;
    let result = (|| {
        let stop = tokio_util::sync::CancellationToken::new();
        let lane = block_on_within(&rt, CONNECT_TIMEOUT, "binding the lane", async {
            let (lane, acceptor) = net::lane::Lane::bind(
                "127.0.0.1".parse()?,
                0,
                net::lane::Routes::default(),
                stop.clone(),
            )
            .await
            .context("binding the lane")?;
            let _acceptor = tokio::spawn(acceptor);
            anyhow::Ok(lane)
        })?;
        let pattern: Vec<u8> = (0..=255u8).cycle().take(4099).collect();
        for line in std::io::stdin().lines() {
            let line = line?;
            let bytes: u64 = line
                .strip_prefix("send ")
                .with_context(|| format!("the lane source was told {line:?}"))?
                .parse()?;
            let (offer, claim) = lane.offer()?.context("no room for an offer")?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "offer {} {} {}",
                offer.port,
                hex(&offer.ticket),
                hex(&offer.key.0)
            )
            .and_then(|()| out.flush())?;
            drop(out);
            let mut socket = block_on_within(&rt, CONNECT_TIMEOUT, "the lane's claim", async {
                Ok(claim.connection().await?)
            })?;
            let source = net::lane::Source::Pattern(&pattern);
            net::lane::send(&mut socket, source, 0, bytes, &offer.key)?;
        }
        stop.cancel();
        Ok(())
    })();
    shut_down(rt);
    result
}

fn sealed_lane_gigabytes(b: &mut Bench) -> Result<()> {
    let total = if b.is_quick() {
        STREAM_BYTES_QUICK
    } else {
        STREAM_BYTES
    };
    let rt = runtime()?;
    let result = lane_rounds(b, &rt, total);
    shut_down(rt);
    result
}

fn lane_rounds(b: &mut Bench, rt: &tokio::runtime::Runtime, total: u64) -> Result<()> {
    let exe = std::env::current_exe().context("finding the shoal-bench executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(LANE_CMD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = KillOnDrop::spawn("lane source child", &mut cmd)?;
    let mut to_child = child
        .child_mut()
        .stdin
        .take()
        .context("the child's stdin")?;
    let mut from_child = std::io::BufReader::new(
        child
            .child_mut()
            .stdout
            .take()
            .context("the child's stdout")?,
    );
    eprintln!(
        "{}: the sending lane in a child process (pid {}), the receiver here",
        b.name(),
        child.child_mut().id()
    );
    let mut transfer = |bytes: u64| -> Result<u64> {
        writeln!(to_child, "send {bytes}").and_then(|()| to_child.flush())?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut from_child, &mut line)?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_, port, ticket, key] = parts[..] else {
            bail!("the lane source said {line:?}");
        };
        let offer = net::lane::Offer {
            port: port.parse()?,
            ticket: unhex(ticket)?,
            key: net::lane::Secret(unhex(key)?),
        };
        let ip = "127.0.0.1".parse()?;
        let mut socket = block_on_within(rt, CONNECT_TIMEOUT, "connecting to the lane", async {
            Ok(net::lane::connect(ip, &offer).await?)
        })?;
        let mut at = 0;
        net::lane::receive(
            &mut socket,
            net::lane::Sink::Discard,
            &mut at,
            bytes,
            &offer.key,
            None,
        )?;
        Ok(at)
    };
    transfer(STREAM_CHUNK as u64).context("the first (1 MiB) transfer")?;
    b.run_batches(|| transfer(total))?;
    drop(to_child);
    child.finish(FINISH_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// Real node processes

/// Fails early, with the way to fix it, if the `shoal` binary is missing.
pub(crate) fn check_shoal_bin(b: &Bench) -> Result<()> {
    let bin = shoal_tests::shoal_bin()
        .context("this row starts `shoal node` processes (scripts/bench builds `shoal`)")?;
    eprintln!("{}: shoal binary {}", b.name(), bin.display());
    Ok(())
}

fn failure_detect_seconds(b: &mut Bench) -> Result<()> {
    failure_detect(b, false)
}

/// `failure_detect_seconds`, or with `--membership swim` its SWIM form.
fn failure_detect(b: &mut Bench, swim: bool) -> Result<()> {
    check_shoal_bin(b)?;
    let mut options = NodeOptions::new()
        .mesh(unique_mesh("failure"))
        .failure_timeout(FAILURE_TIMEOUT_SECS);
    if swim {
        options = options.args(["--membership", "swim"]);
    }
    let mut mesh = Mesh::start_with(FAILURE_MESH_NODES, &options, None)
        .context("starting the node processes")?;
    let took = mesh
        .wait_converged(PROCESS_CONVERGE_TIMEOUT)
        .context("the first convergence")?;
    eprintln!(
        "{}: {FAILURE_MESH_NODES} `shoal node` processes (--failure-timeout \
         {FAILURE_TIMEOUT_SECS}) converged {:.3} s after answering; each operation kills one \
         (never node 0, the bootstrap peer), times until no other lists it, then restarts it \
         with the same identity and waits for the mesh to converge again (untimed)",
        b.name(),
        took.as_secs_f64()
    );
    let mut victim = 0;
    let mut detected = Vec::new();
    b.run_timed(|| {
        victim = victim % (FAILURE_MESH_NODES - 1) + 1;
        let id = mesh.node(victim).peer_id().to_owned();
        let start = Instant::now();
        mesh.node_mut(victim).kill_9()?;
        mesh.wait_gone(&id, DETECT_TIMEOUT)
            .with_context(|| format!("killed node {victim} ({id}) was not dropped"))?;
        let took = start.elapsed();
        detected.push(took.as_secs_f64());
        mesh.node_mut(victim)
            .restart()
            .with_context(|| format!("restarting node {victim}"))?;
        mesh.wait_converged(PROCESS_CONVERGE_TIMEOUT)
            .with_context(|| format!("node {victim} rejoining after a restart"))?;
        Ok(took)
    })?;
    let (min, max) = detected
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    eprintln!(
        "{}: {} kills, detected after {min:.3} s at best, {max:.3} s at worst (polling \
         `shoal status --json` of the {} others every {} ms)",
        b.name(),
        detected.len(),
        FAILURE_MESH_NODES - 1,
        shoal_tests::POLL.as_millis()
    );
    Ok(())
}

/// The mesh the idle rows observe, kept across them (see [`before_row`]).
struct IdleMesh {
    /// Its size (the rows' N).
    n: usize,
    /// Whether its nodes run `--membership swim`.
    swim: bool,
    mesh: Mesh,
    /// The node observed: one in the middle, neither the bootstrap peer nor the last started.
    observed: usize,
}

/// The idle mesh, while idle rows of its size run one after the other.
static IDLE_MESH: Mutex<Option<IdleMesh>> = Mutex::new(None);

/// Whether the row `name` runs on the idle mesh.
fn uses_idle_mesh(name: &str) -> bool {
    matches!(
        name.strip_prefix("swim_").unwrap_or(name),
        "idle_peer_cpu_percent" | "idle_peer_rss_megabytes" | "idle_peer_gossip_bytes_per_second"
    )
}

/// Called by the runner before each row (by its registered name): stops the idle mesh unless
/// the row runs on it.
pub fn before_row(name: &str) {
    if !uses_idle_mesh(name) {
        release_idle_mesh();
    }
}

/// Stops the idle mesh's processes, if it runs.
pub fn release_idle_mesh() {
    let idle = IDLE_MESH
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(idle) = idle {
        eprintln!("idle mesh: stopping its {} node processes", idle.n);
        drop(idle);
    }
}

/// How many of the other nodes each node sees (`None`: it did not answer).
fn process_views(mesh: &Mesh) -> Vec<Option<usize>> {
    let ids: HashSet<&str> = mesh.nodes().iter().map(NodeProcess::peer_id).collect();
    mesh.nodes()
        .iter()
        .map(|node| {
            let view = node.view().ok()?;
            Some(
                view.iter()
                    .filter(|p| *p != node.peer_id() && ids.contains(p.as_str()))
                    .count(),
            )
        })
        .collect()
}

/// Summary of [`process_views`]: how many nodes have full views, and the least seen.
fn describe_views(views: &[Option<usize>]) -> String {
    let n = views.len();
    let full = views.iter().filter(|v| **v == Some(n - 1)).count();
    let silent = views.iter().filter(|v| v.is_none()).count();
    let seen: Vec<usize> = views.iter().flatten().copied().collect();
    let (min, mean) = match seen.len() {
        0 => (0, 0.0),
        k => (
            seen.iter().copied().min().unwrap_or(0),
            seen.iter().sum::<usize>() as f64 / k as f64,
        ),
    };
    format!(
        "{full} of {n} nodes see all {} others; the least sees {min}, on average {mean:.1}; \
         {silent} did not answer",
        n - 1
    )
}

impl IdleMesh {
    /// Starts `n` nodes and waits until they converge (or the deadline passes: then says how
    /// far they got and goes on), then lets them settle.
    fn start(n: usize, swim: bool, name: &str, quick: bool) -> Result<Self> {
        let mut options = NodeOptions::new().mesh(unique_mesh("idle")).cpus(1.0);
        if swim {
            options = options.args(["--membership", "swim"]);
        }
        options.store_bytes = IDLE_STORE_BYTES;
        options.startup_timeout = IDLE_STARTUP_TIMEOUT;
        eprintln!(
            "{name}: starting {n} `shoal node` processes (--cpus 1, --store-bytes \
             {IDLE_STORE_BYTES}, loopback, all bootstrapped from the first)"
        );
        let start = Instant::now();
        let mesh = Mesh::start_with(n, &options, None)
            .with_context(|| format!("starting {n} node processes"))?;
        eprintln!(
            "{name}: all {n} answer and listen after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        // Sweeps of `shoal status`, from the first node that did not have a full view.
        let deadline = Instant::now() + IDLE_CONVERGE_TIMEOUT;
        let ids: HashSet<String> = mesh
            .nodes()
            .iter()
            .map(|n| n.peer_id().to_owned())
            .collect();
        // How many `shoal status` calls the sweeps made, and how long they took.
        let (calls, asking) = (
            std::cell::Cell::new(0u32),
            std::cell::Cell::new(Duration::ZERO),
        );
        let full = |node: &NodeProcess| {
            let t = Instant::now();
            let view = node.view();
            calls.set(calls.get() + 1);
            asking.set(asking.get() + t.elapsed());
            view.is_ok_and(|v| ids.iter().all(|id| id == node.peer_id() || v.contains(id)))
        };
        let mut next = 0;
        let converged = loop {
            while next < n && full(mesh.node(next)) {
                next += 1;
            }
            if next == n {
                if mesh.nodes().iter().all(full) {
                    break true;
                }
                next = 0;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(IDLE_SWEEP_PAUSE);
        };
        let views = process_views(&mesh);
        eprintln!(
            "{name}: watched by sweeps of `shoal status --json` over the nodes: {} calls, \
             {:.3} s each on average (so convergence is seen late by up to a sweep)",
            calls.get(),
            asking.get().as_secs_f64() / f64::from(calls.get().max(1))
        );
        if converged {
            eprintln!(
                "{name}: converged {:.1} s after the first start ({})",
                start.elapsed().as_secs_f64(),
                describe_views(&views)
            );
        } else {
            eprintln!(
                "{name}: NOT converged {:.1} s after the first start, measuring the mesh as it \
                 is: {}",
                start.elapsed().as_secs_f64(),
                describe_views(&views)
            );
        }
        let settle = if quick {
            IDLE_SETTLE_QUICK
        } else {
            IDLE_SETTLE
        };
        eprintln!("{name}: leaving the mesh idle for {settle:?} before measuring");
        std::thread::sleep(settle);
        Ok(Self {
            n,
            swim,
            mesh,
            observed: n / 2,
        })
    }
}

/// What an idle row reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idle {
    Cpu,
    Rss,
    Gossip,
}

fn idle_peer_cpu_percent(b: &mut Bench) -> Result<()> {
    idle_row(b, Idle::Cpu, false)
}

fn idle_peer_rss_megabytes(b: &mut Bench) -> Result<()> {
    idle_row(b, Idle::Rss, false)
}

fn idle_peer_gossip_bytes_per_second(b: &mut Bench) -> Result<()> {
    idle_row(b, Idle::Gossip, false)
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> Result<f64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) = {ticks}");
    Ok(ticks as f64)
}

/// `utime + stime` of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses: state (field 3) first, so
    // utime (field 14) and stime (15) are the 12th and 13th.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    ensure!(
        !matches!(rest.first(), Some(&"Z" | &"X")),
        "process {pid} has exited"
    );
    let field = |i: usize| -> Result<u64> {
        rest.get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat: {stat}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// A node's gossip byte counters (`gossip.bytes_out`, `gossip.bytes_in` of `status --json`),
/// plus, under SWIM, its membership's (`membership.bytes_out`, `membership.bytes_in`).
fn gossip_bytes(socket: &Path, swim: bool) -> Result<(u64, u64)> {
    let status = shoal_tests::status_json(socket)?;
    let get = |section: &str, key: &str| {
        status[section][key]
            .as_u64()
            .with_context(|| format!("no {section}.{key} in `shoal status --json`: {status}"))
    };
    let (mut out, mut into) = (get("gossip", "bytes_out")?, get("gossip", "bytes_in")?);
    if swim {
        out += get("membership", "bytes_out")?;
        into += get("membership", "bytes_in")?;
    }
    Ok((out, into))
}

/// Minimum, mean and maximum.
fn spread(xs: &[f64]) -> (f64, f64, f64) {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, xs.iter().sum::<f64>() / xs.len().max(1) as f64, max)
}

fn idle_row(b: &mut Bench, what: Idle, swim: bool) -> Result<()> {
    check_shoal_bin(b)?;
    let n = b.size().context("an idle row runs with a size")?;
    ensure!(n >= 2, "a mesh of {n} node(s) is not a mesh");
    let n = usize::try_from(n).context("N too large")?;
    let mut guard = IDLE_MESH.lock().unwrap_or_else(PoisonError::into_inner);
    if guard
        .as_ref()
        .is_some_and(|idle| idle.n != n || idle.swim != swim)
    {
        drop(guard.take());
    }
    if guard.is_none() {
        *guard = Some(IdleMesh::start(n, swim, b.name(), b.is_quick())?);
    } else {
        eprintln!("{}: on the idle mesh of the previous row", b.name());
    }
    let idle = guard.as_ref().context("the idle mesh")?;
    let node = idle.mesh.node(idle.observed);
    let (pid, socket) = (node.pid(), node.socket());
    ensure!(
        shoal_tests::pid_alive(pid),
        "{}",
        node.with_log(format!("node {} (pid {pid}) is gone", idle.observed))
    );
    eprintln!(
        "{}: observing node {} (pid {pid}, {})",
        b.name(),
        idle.observed,
        node.peer_id()
    );
    let pids: Vec<u32> = idle.mesh.nodes().iter().map(NodeProcess::pid).collect();
    let tck = clock_ticks()?;
    let rounds = u32::try_from(b.method().rounds).unwrap_or(u32::MAX).max(1);
    let min_window = if b.is_quick() {
        Duration::ZERO
    } else {
        IDLE_OBSERVATION / rounds
    };
    let all_ticks = || {
        pids.iter()
            .map(|&p| cpu_ticks(p))
            .collect::<Result<Vec<_>>>()
    };
    let (ticks_before, row_start) = (all_ticks()?, Instant::now());
    let (mut gossip_out, mut gossip_in) = (0u64, 0u64);
    // The `shoal status` calls of the gossip row, and how long they took.
    let (mut status_calls, mut status_time) = (0u32, Duration::ZERO);
    let mut gossip_now = || -> Result<(u64, u64)> {
        let t = Instant::now();
        let bytes = gossip_bytes(&socket, swim)?;
        status_calls += 1;
        status_time += t.elapsed();
        Ok(bytes)
    };
    b.run_sampled(|d| {
        let window = d.max(min_window);
        match what {
            Idle::Cpu => {
                let (t0, start) = (cpu_ticks(pid)?, Instant::now());
                std::thread::sleep(window);
                let (t1, secs) = (cpu_ticks(pid)?, start.elapsed().as_secs_f64());
                Ok((t1 - t0) as f64 / tck / secs * 100.0)
            }
            Idle::Rss => {
                let start = Instant::now();
                let mut samples = vec![rss_bytes(pid)? as f64];
                while start.elapsed() < window {
                    std::thread::sleep(
                        RSS_SAMPLE_EVERY.min(window.saturating_sub(start.elapsed())),
                    );
                    samples.push(rss_bytes(pid)? as f64);
                }
                Ok(spread(&samples).1 / 1e6)
            }
            Idle::Gossip => {
                let ((o0, i0), start) = (gossip_now()?, Instant::now());
                std::thread::sleep(window);
                let ((o1, i1), secs) = (gossip_now()?, start.elapsed().as_secs_f64());
                gossip_out += o1 - o0;
                gossip_in += i1 - i0;
                Ok(((o1 - o0) + (i1 - i0)) as f64 / secs)
            }
        }
    })?;
    let secs = row_start.elapsed().as_secs_f64();
    match what {
        Idle::Cpu => {
            let ticks_after = all_ticks()?;
            let percents: Vec<f64> = ticks_before
                .iter()
                .zip(&ticks_after)
                .map(|(t0, t1)| (t1 - t0) as f64 / tck / secs * 100.0)
                .collect();
            let (min, mean, max) = spread(&percents);
            eprintln!(
                "{}: over the same {secs:.1} s, all {n} nodes: {mean:.2}% of a CPU on average \
                 (least {min:.2}%, most {max:.2}%; node 0, the bootstrap peer: {:.2}%), {:.0}% \
                 of a CPU together",
                b.name(),
                percents[0],
                mean * n as f64
            );
        }
        Idle::Rss => {
            let rss: Vec<f64> = pids
                .iter()
                .map(|&p| rss_bytes(p).map(|r| r as f64 / 1e6))
                .collect::<Result<_>>()?;
            let (min, mean, max) = spread(&rss);
            eprintln!(
                "{}: all {n} nodes now: {mean:.1} MB on average (least {min:.1}, most \
                 {max:.1}; node 0: {:.1}), {:.0} MB together",
                b.name(),
                rss[0],
                mean * n as f64
            );
        }
        Idle::Gossip => {
            eprintln!(
                "{}: of the gossip bytes observed, {gossip_out} went out and {gossip_in} came \
                 in (load-report payloads, and under SWIM its frames: libp2p's framing, \
                 encryption, ping, identify and Kademlia are not counted); a `shoal status \
                 --json` took {:.3} s on average",
                b.name(),
                status_time.as_secs_f64() / f64::from(status_calls.max(1))
            );
        }
    }
    let views = process_views(&idle.mesh);
    eprintln!("{}: views now: {}", b.name(), describe_views(&views));
    Ok(())
}
