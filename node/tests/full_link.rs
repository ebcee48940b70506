//! A peer that stops reading its control link: the node's queue towards it fills (or its
//! writer makes no progress for `link_stall`), the node treats the peer as lost, and every
//! task it had sent there ends in a typed error for its owner instead of a wait that never
//! ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_node::config::MeshConfig;
use shoal_node::net::link::{NetEvent, NetSink};
use shoal_node::net::{Load, NetConfig, TransportKind};
use shoal_node::NodeConfig;
use shoal_protocol::{
    Arg, BinaryId, BinaryInfo, ClientId, Hello, ObjectValue, ResourceSet, Role, TaskError, TaskId,
    TaskKind, TaskSpec, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};

mod inproc;

/// A consumer of network events that takes the first and then never another: the peer's
/// link reader waits on it forever and stops reading.
struct Stuck;

impl NetSink for Stuck {
    fn send(&self, _ev: NetEvent) -> BoxFuture<'_, bool> {
        Box::pin(std::future::pending())
    }

    fn try_send(&self, _ev: NetEvent) -> bool {
        false
    }
}

fn net_config(mesh: &str) -> NetConfig {
    let mut c = NetConfig::new(shoal_node::auth::testing::token(mesh));
    c.transport = TransportKind::Memory;
    c.listen = vec!["/memory/0".parse().unwrap()];
    c.mdns = false;
    c.report_interval = Duration::from_millis(200);
    // A link that writes nothing for this long is broken (20 s by default).
    c.link_stall = Duration::from_secs(2);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_fails_its_tasks_instead_of_hanging() {
    let dir = std::env::temp_dir().join(format!("shoal-full-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A: a node with no CPU of its own, so that its tasks can only run at a peer.
    let a = shoal_node::start(NodeConfig {
        socket: dir.join("a.sock"),
        cpus: 0.0,
        store_parent: dir.clone(),
        spill_parent: dir.join("spill"),
        store_bytes: 64 << 20,
        mesh: Some(MeshConfig {
            data_dir: dir.join("data"),
            net: net_config("full-link"),
        }),
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    let mut addr = None;
    inproc::wait(Duration::from_secs(10), "A's address", || {
        addr = futures::executor::block_on(a.status())
            .ok()
            .and_then(|s| s.mesh)
            .and_then(|m| m.listen_addrs.first().cloned());
        addr.is_some()
    })
    .await;
    // B: a bare peer of the mesh that claims 10,000 free CPUs and stops reading.
    let mut c = net_config("full-link");
    c.peers = vec![addr.unwrap().parse().unwrap()];
    let b = inproc::start(c).await;
    assert!(b.deliver_to(Arc::new(Stuck)));
    let cpus = ResourceSet::cpus(10_000.0);
    b.update_load(Load {
        total: cpus.clone(),
        free: cpus,
        queued: 0,
        running: 0,
        store_capacity: 1 << 30,
        store_used: 0,
        binaries: Vec::new(),
    });
    let b_id = b.peer_id().to_string();
    inproc::wait(Duration::from_secs(20), "A to see B's report", || {
        futures::executor::block_on(a.status())
            .ok()
            .and_then(|s| s.mesh)
            .is_some_and(|m| {
                m.peers
                    .iter()
                    .any(|p| p.peer_id == b_id && p.total.get_milli("CPU") > 0)
            })
    })
    .await;

    // A driver on A submits more than B's link can hold (60 KiB each, 90 MiB in all).
    let client_id = ClientId(77);
    let binary = BinaryId([9; 32]);
    let mut client = a
        .connect_local(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Driver,
            pid: std::process::id(),
            client: client_id,
            binary: Some(BinaryInfo {
                id: binary,
                path: "/bin/true".into(),
                manifest: None,
            }),
        })
        .await
        .unwrap();
    assert!(matches!(
        client.recv().await,
        Some(ToClient::Welcome { .. })
    ));
    const TASKS: u64 = 1_500;
    let mut pending = HashSet::new();
    for i in 0..TASKS {
        let spec = TaskSpec {
            task_id: TaskId::new(client_id, i),
            function: "f".into(),
            binary,
            args: vec![Arg::Value(vec![i as u8; 60 << 10])],
            resources: ResourceSet::cpus(1.0),
            max_retries: 0,
            owner: client_id,
            kind: TaskKind::Function,
            nested: Vec::new(),
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            strategy: Default::default(),
            label_selector: Vec::new(),
            stream: None,
            env: Vec::new(),
        };
        pending.insert(spec.return_id());
        client
            .send(vec![ToNode::Submit(Box::new(spec))])
            .await
            .unwrap();
    }

    // Every result ends as a typed error; none is left waiting.
    let mut lost = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while !pending.is_empty() {
            match client.recv().await {
                Some(ToClient::Object {
                    id,
                    value: ObjectValue::Error(e),
                }) => {
                    assert!(
                        matches!(e, TaskError::PeerLost { .. } | TaskError::Infeasible { .. }),
                        "{e}"
                    );
                    lost += usize::from(matches!(e, TaskError::PeerLost { .. }));
                    assert!(pending.remove(&id), "a result twice, or of another task");
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("the node stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} tasks still waiting after 60 s", pending.len()));
    assert!(lost > 0, "the tasks sent to B failed as lost with it");
    a.shutdown().await;
    b.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
