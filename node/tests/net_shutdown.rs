//! `NetHandle::shutdown`: a peer that shuts its network down ends every task it started
//! (libp2p's connection tasks included), closes its listener and connections, is seen lost
//! by the peer it was connected to, and refuses further use with a typed error.
//!
//! The peer under test runs alone on a current-thread runtime of its own, so the runtime's
//! count of alive tasks is its count; the other peer runs on another runtime.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use shoal_node::net::code::CodeError;
use shoal_node::net::link::{LinkError, NetEvent, NetSink};
use shoal_node::net::membership::MembershipConfig;
use shoal_node::net::objects::{ObjectError, ObjectSource, Served};
use shoal_node::net::{self, NetConfig, NetError, NetHandle, TransportKind};
use shoal_protocol::mesh::{PeerMsg, PeerRequest};
use shoal_protocol::{BinaryId, Digest, ObjectId, SharedObject};

mod inproc;

/// How long any one thing may take here.
const LIMIT: Duration = Duration::from_secs(20);

/// Records what the network tells the node.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn record(&self, ev: &NetEvent) {
        let line = match ev {
            NetEvent::Report { .. } => return,
            NetEvent::Lost { peer } => format!("lost {peer}"),
            NetEvent::Unreachable { peer } => format!("unreachable {peer}"),
            NetEvent::Messages { peer, msgs } => format!("{} from {peer}", msgs.len()),
        };
        self.0.lock().unwrap().push(line);
    }

    fn has(&self, line: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l == line)
    }
}

impl NetSink for Recorder {
    fn send(&self, ev: NetEvent) -> BoxFuture<'_, bool> {
        self.record(&ev);
        Box::pin(async { true })
    }

    fn try_send(&self, ev: NetEvent) -> bool {
        self.record(&ev);
        true
    }
}

/// Holds no object.
struct Nothing;

impl ObjectSource for Nothing {
    fn open(&self, _: ObjectId) -> BoxFuture<'static, Option<Served>> {
        Box::pin(async { None })
    }
}

fn config(transport: &TransportKind, peers: Vec<Multiaddr>) -> NetConfig {
    let mut c = NetConfig::new(shoal_node::auth::testing::token("shutdown"));
    c.transport = transport.clone();
    c.listen = vec![match transport {
        TransportKind::Memory => "/memory/0".parse().unwrap(),
        TransportKind::Tcp => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
    }];
    c.peers = peers;
    c.mdns = false;
    c.report_interval = Duration::from_millis(200);
    c.membership = MembershipConfig {
        expiry: Duration::from_secs(3),
        grace: Duration::from_millis(300),
    };
    c
}

fn sees(h: &NetHandle, other: PeerId) -> bool {
    let id = other.to_string();
    h.view()
        .peers
        .iter()
        .any(|p| p.peer_id == id && p.connected && p.report.is_some())
}

/// Polls `cond` on the current runtime until it holds; panics after `LIMIT`.
async fn until(what: &str, cond: impl FnMut() -> bool) {
    inproc::wait(LIMIT, what, cond).await;
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// Runs `fut` on `rt`, failing the test if it takes longer than `LIMIT`.
fn block_on<T>(rt: &tokio::runtime::Runtime, fut: impl Future<Output = T>) -> T {
    rt.block_on(async {
        tokio::time::timeout(LIMIT * 3, fut)
            .await
            .expect("the test took too long")
    })
}

fn a_peer_shut_down_stops_everything(transport: TransportKind) {
    // The other peer, on a runtime of its own.
    let other_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let b_events = Arc::new(Recorder::default());
    let b = block_on(&other_rt, inproc::start(config(&transport, vec![])));
    assert!(b.deliver_to(b_events.clone()));
    let b_addr = inproc::addr(&b);

    // The peer under test, alone on this runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let alive = || rt.metrics().num_alive_tasks();
    let before = alive();
    let a_events = Arc::new(Recorder::default());
    let a = block_on(&rt, async {
        let a = inproc::start(config(&transport, vec![b_addr])).await;
        assert!(a.deliver_to(a_events.clone()));
        a.serve_objects(Arc::new(Nothing));
        until("a and b see each other", || {
            sees(&a, b.peer_id()) && sees(&b, a.peer_id())
        })
        .await;
        // A control link each way: a writer and a reader on a.
        let msg = PeerMsg::Fetch {
            id: ObjectId([1; 32]),
        };
        a.send_peer(b.peer_id(), &msg).unwrap();
        b.send_peer(a.peer_id(), &msg).unwrap();
        let (from_a, from_b) = (
            format!("1 from {}", a.peer_id()),
            format!("1 from {}", b.peer_id()),
        );
        until("a message each way", || {
            b_events.has(&from_a) && a_events.has(&from_b)
        })
        .await;
        a
    });
    let running = alive();
    assert!(
        running > before + 4,
        "the network runs tasks: {running} alive, {before} before"
    );
    let listen: Multiaddr = inproc::addr(&a);

    let took = block_on(&rt, async {
        let started = Instant::now();
        a.shutdown().await;
        let took = started.elapsed();
        // Idempotent: a second call returns, at once.
        a.shutdown().await;
        took
    });
    // Nothing was in flight: the idle links and acceptors stop without waiting out the
    // grace (five seconds).
    assert!(took < Duration::from_millis(4500), "shutdown took {took:?}");

    // Every task the network started has ended (an aborted one is reaped on its next poll).
    block_on(&rt, async {
        let deadline = Instant::now() + LIMIT;
        while alive() != before {
            assert!(
                Instant::now() < deadline,
                "{} tasks alive after shutdown, {before} before the network started",
                alive()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // The other peer sees it go.
    let a_lost = format!("lost {}", a.peer_id());
    block_on(&other_rt, async {
        until("b sees a lost", || b_events.has(&a_lost)).await;
        until("b has no connection to a", || {
            let id = a.peer_id().to_string();
            !b.view()
                .peers
                .iter()
                .any(|p| p.peer_id == id && p.connected)
        })
        .await;
    });

    // The listener is closed.
    if let Some(port) = tcp_port(&listen) {
        let refused = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "port {port} after shutdown: {refused:?}"
        );
    }

    // The handle refuses further use, with typed errors.
    block_on(&rt, async {
        let key = b"k".to_vec();
        assert!(matches!(
            a.put_record(key.clone(), b"v".to_vec()).await,
            Err(NetError::Stopped)
        ));
        assert!(matches!(
            a.get_record(key.clone()).await,
            Err(NetError::Stopped)
        ));
        assert!(matches!(
            a.get_providers(key.clone()).await,
            Err(NetError::Stopped)
        ));
        assert!(matches!(
            a.dial(inproc::addr(&b)).await,
            Err(NetError::Stopped)
        ));
        assert!(matches!(
            a.request(
                b.peer_id(),
                PeerRequest::Ping {
                    mesh: "shutdown".into()
                }
            )
            .await,
            Err(NetError::Stopped)
        ));
        assert!(matches!(
            a.send_peer(b.peer_id(), &PeerMsg::Release { ids: vec![] }),
            Err(LinkError::Stopped)
        ));
        assert!(matches!(
            a.fetch_binary(b.peer_id(), BinaryId([2; 32])).await,
            Err(CodeError::Stopped)
        ));
        let dest = std::env::temp_dir().join(format!("shoal-shutdown-{}", std::process::id()));
        let object = SharedObject {
            size: 1,
            digest: Some(Digest::of(b"x")),
        };
        assert!(matches!(
            a.pull_object(&[b.peer_id()], ObjectId([3; 32]), object, &dest)
                .await,
            Err(ObjectError::Stopped)
        ));
        // The commands without an answer are dropped, with a log line.
        a.start_providing(key.clone());
        a.stop_providing(key.clone());
        a.remove_record(key);
        a.update_load(net::Load::default());
        a.serve_objects(Arc::new(Nothing));
    });
    assert_eq!(alive(), before, "a stopped network starts nothing");

    block_on(&other_rt, b.shutdown());
}

#[test]
fn a_peer_shut_down_stops_everything_over_the_memory_transport() {
    a_peer_shut_down_stops_everything(TransportKind::Memory);
}

#[test]
fn a_peer_shut_down_stops_everything_over_tcp() {
    a_peer_shut_down_stops_everything(TransportKind::Tcp);
}

#[test]
fn a_stream_still_being_served_is_dropped_after_the_grace() {
    let transport = TransportKind::Memory;
    let other_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let b = block_on(&other_rt, inproc::start(config(&transport, vec![])));
    let b_addr = inproc::addr(&b);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let alive = || rt.metrics().num_alive_tasks();
    let before = alive();
    let a = block_on(&rt, async {
        let a = inproc::start(config(&transport, vec![b_addr])).await;
        a.serve_objects(Arc::new(Nothing));
        until("a and b see each other", || {
            sees(&a, b.peer_id()) && sees(&b, a.peer_id())
        })
        .await;
        a
    });
    // b opens an object stream to a and never sends its request: a's handler waits for it
    // (for up to the protocol's 30 s stall timeout).
    let idle = alive();
    // Opened on b's runtime while this one drives a (a current-thread runtime runs only
    // inside `block_on`).
    let (mut control, to) = (b.streams(), a.peer_id());
    let opening = other_rt.spawn(async move {
        let protocol = shoal_node::net::Protocols::for_mesh("shutdown")
            .unwrap()
            .obj;
        control.open_stream(to, protocol).await
    });
    let stream = block_on(&rt, opening).unwrap().unwrap();
    block_on(&rt, until("a serves the stream", || alive() > idle));

    let took = block_on(&rt, async {
        let started = Instant::now();
        a.shutdown().await;
        started.elapsed()
    });
    // The handler had the grace (five seconds) to finish, then was dropped.
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_secs(9),
        "shutdown took {took:?}"
    );
    block_on(&rt, async {
        let deadline = Instant::now() + LIMIT;
        while alive() != before {
            assert!(
                Instant::now() < deadline,
                "{} tasks alive after shutdown, {before} before the network started",
                alive()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    drop(stream);
    block_on(&other_rt, b.shutdown());
}

/// A network without a configured code cache keeps one per process in the temporary
/// directory: removed when it stops, and at the next start when its process died first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_process_code_cache_goes_with_its_process() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = std::env::temp_dir().join(format!("shoal-code-{dead}-12D3KooWdead"));
    std::fs::create_dir_all(stale.join("bins")).unwrap();
    let mut c = config(&TransportKind::Memory, vec![]);
    c.code_cache = None;
    let h = net::start(libp2p::identity::Keypair::generate_ed25519(), c)
        .await
        .unwrap();
    assert!(!stale.exists(), "a dead process's cache was left");
    let mine =
        std::env::temp_dir().join(format!("shoal-code-{}-{}", std::process::id(), h.peer_id()));
    assert!(mine.is_dir());
    h.shutdown().await;
    assert!(!mine.exists(), "the cache outlived its network");
}
