//! A peer that opens many control streams, each announcing a 64 MiB frame and sending
//! nothing more, against a real `shoal node` process: the node's memory stays flat, the
//! streams past the per-peer limit are closed at once, and the node goes on serving.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Stream, StreamProtocol};
use shoal_node::net::Protocols;
use shoal_tests::{NodeOptions, NodeProcess};
use tokio::sync::mpsc;

/// A frame header announcing a 64 MiB payload: the most a control frame may carry.
const ANNOUNCE: u32 = 64 << 20;

/// Bytes of a `/proc/<pid>/status` field given in kB (`VmRSS`, `VmHWM`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    kb << 10
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A bare libp2p peer of the node's mesh: TCP + Noise + Yamux, identify with the mesh's
/// protocol version, and libp2p-stream to open the node's protocols. Its swarm runs in a task
/// that ends when this is dropped.
struct Client {
    control: libp2p_stream::Control,
    peer_id: PeerId,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects to the node at `addr` (ending in `/p2p/<id>`) as a peer of `mesh`.
    async fn connect(addr: &str, mesh: &str) -> Self {
        let protocols = Protocols::for_mesh(mesh).unwrap();
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| ClientBehaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    protocols.identify.clone(),
                    key.public(),
                )),
                stream: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let addr: Multiaddr = addr.parse().unwrap();
        swarm.dial(addr).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                    swarm.select_next_some().await
                {
                    if let Some(tx) = tx.take() {
                        tx.send(peer_id).await.expect("the test waits");
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("connected within 10 s")
            .expect("the swarm task runs");
        Self {
            control,
            peer_id,
            task,
        }
    }

    async fn open(&self, to: PeerId, protocol: StreamProtocol) -> Stream {
        let mut control = self.control.clone();
        tokio::time::timeout(Duration::from_secs(10), control.open_stream(to, protocol))
            .await
            .expect("opened within 10 s")
            .expect("stream opened")
    }
}

/// Whether the node has closed (or reset) `stream`: a read ends or fails.
async fn closed_by_node(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn start_node(mesh: &str) -> NodeProcess {
    let options = NodeOptions::new()
        .bin(env!("CARGO_BIN_EXE_shoal"))
        .mesh(mesh)
        .cpus(1.0)
        .env("RUST_LOG", "info,shoal_node::net=debug");
    NodeProcess::start(options).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Prints the node's memory before and after `SHOAL_ATTACK_STREAMS` (default 200) control
/// streams each announce a 64 MiB frame: for measuring, not a check. Run with
/// `cargo test -p shoal-node --test peer_stream_memory -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints numbers"]
async fn measure_announced_frames() {
    let streams: usize = std::env::var("SHOAL_ATTACK_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mesh = "stream-memory";
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let node = start_node(mesh);
    let pid = node.pid();
    let node_id: PeerId = node.peer_id().parse().unwrap();
    let client = Client::connect(node.listen_addr(), mesh).await;
    let ctl = Protocols::for_mesh(mesh).unwrap().ctl;
    // Settled: a stream opened and answered by the node's protocol negotiation.
    drop(client.open(node_id, ctl.clone()).await);
    let rss_before = proc_kb(pid, "VmRSS");
    let hwm_before = proc_kb(pid, "VmHWM");
    let started = Instant::now();
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut s = client.open(node_id, ctl.clone()).await;
        if s.write_all(&ANNOUNCE.to_le_bytes()).await.is_ok() && s.flush().await.is_ok() {
            open.push(s);
        }
    }
    // Until the peak stops rising for two seconds (at most 60 s).
    let mut last = (proc_kb(pid, "VmHWM"), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let hwm = proc_kb(pid, "VmHWM");
        if hwm > last.0 {
            last = (hwm, Instant::now());
        }
    }
    let mut closed = 0;
    for s in &mut open {
        closed += usize::from(closed_by_node(s).await);
    }
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "{streams} streams x 4 bytes ({} written), after {:?}: VmRSS {:.1} -> {:.1} MiB, VmHWM {:.1} -> {:.1} MiB; \
         {closed} closed by the node",
        open.len(),
        started.elapsed(),
        mib(rss_before),
        mib(proc_kb(pid, "VmRSS")),
        mib(hwm_before),
        mib(proc_kb(pid, "VmHWM")),
    );
    drop(open);
    drop(client);
}
