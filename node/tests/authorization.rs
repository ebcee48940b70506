//! Authorization inside a mesh, on a real `shoal node` process over loopback TCP: an
//! admitted peer that was given nothing cannot read a driver's object (by message or by
//! transfer), release it, call or kill the driver's actor, or download the driver's binary,
//! even knowing their ids. Every
//! request is refused and counted (`shoal status --json`, `refused`), and the object and the
//! actor are as they were: the driver reads the one and calls the other afterwards.
//!
//! The driver is this test binary again, attached to the node's socket.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_node::auth::JoinToken;
use shoal_node::net::{NetConfig, NetHandle};
use shoal_protocol::mesh::{PeerMsg, RemoteTask};
use shoal_protocol::{
    ActorId, ActorToken, Arg, BinaryId, ClientId, Digest, ObjectId, ResourceSet, SharedObject,
    TaskId, TaskKind, TaskSpec,
};
use shoal_tests::{wait_for, KillOnDrop, NodeOptions, NodeProcess};

mod inproc;

const ENV_SCENARIO: &str = "SHOAL_TEST_AUTHZ_SCENARIO";
const SIZE: usize = 4 << 20;

/// A counter: its state shows whether anything reached it.
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[shoal::actor]
impl Counter {
    pub fn new() -> Self {
        Counter::default()
    }

    pub fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// The driver (a no-op when run as a test of its own): puts an object and makes an actor,
/// prints their ids, waits for a line on stdin, then checks both are intact.
#[test]
fn driver_entry() {
    if std::env::var(ENV_SCENARIO).is_err() {
        return;
    }
    let _shoal = shoal::init().unwrap();
    let bytes: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let obj = shoal::put_bytes(&bytes).unwrap();
    let counter = Counter::remote();
    assert_eq!(counter.incr().get_blocking().unwrap(), 1);
    println!(
        "ready {} {}",
        obj.id(),
        shoal::ActorHandle::id(&counter).to_hex()
    );
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let read = obj.get_blocking().unwrap();
    assert_eq!(&read[..], &bytes[..], "the object changed");
    let n = counter.incr().get_blocking().unwrap();
    println!("result {n}");
}

fn refused(node: &NodeProcess, kind: &str) -> u64 {
    node.status()["refused"][kind].as_u64().unwrap_or(0)
}

/// An admitted peer of the mesh, in this process, connected to `node`.
async fn intruder(token: &str, node: &NodeProcess) -> NetHandle {
    let mut c = NetConfig::new(JoinToken::from_text(token).unwrap());
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.peers = vec![node.listen_addr().parse().unwrap()];
    c.mdns = false;
    let h = inproc::start(c).await;
    let id = node.peer_id().to_owned();
    inproc::wait(Duration::from_secs(30), "the intruder joins", || {
        h.view().peers.iter().any(|p| p.peer_id == id)
    })
    .await;
    h
}

#[test]
fn a_peer_given_nothing_cannot_read_release_call_kill_or_download() {
    let mesh = format!("authz-{}", std::process::id());
    let token = shoal_tests::authority::token(&mesh).unwrap();
    let node = NodeProcess::start(NodeOptions::new().join(&mesh, &token)).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "1")
        .env("SHOAL_SOCKET", node.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut driver = KillOnDrop::spawn("driver", &mut cmd).unwrap();
    let mut out = BufReader::new(driver.child_mut().stdout.take().unwrap());
    let mut line = String::new();
    let ready = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the driver exited");
        if let Some(rest) = line.trim().strip_prefix("ready ") {
            break rest.to_owned();
        }
    };
    let (obj, actor) = ready.split_once(' ').unwrap();
    let obj = ObjectId::from_hex(obj).unwrap();
    let actor = ActorId::from_hex(actor).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let target: libp2p::PeerId = node.peer_id().parse().unwrap();
    // The driver's binary: its id shows in the node's status (the actor's worker runs it).
    let binary = node.status()["workers"][0]["binary"]
        .as_str()
        .and_then(BinaryId::from_hex)
        .expect("the actor's worker and its binary");
    let h = rt.block_on(async {
        let h = intruder(&token, &node).await;
        let forged = ActorToken([0x5a; 16]);
        let call = TaskSpec {
            task_id: TaskId::new(ClientId(666), 1),
            function: "Counter::incr".into(),
            binary: BinaryId([7; 32]),
            args: vec![Arg::Value(vec![])],
            resources: ResourceSet::new(),
            max_retries: 0,
            owner: ClientId(666),
            kind: TaskKind::ActorMethod {
                actor,
                token: forged,
            },
            nested: Vec::new(),
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            strategy: Default::default(),
            label_selector: Vec::new(),
            stream: None,
            env: Vec::new(),
        };
        let msgs = [
            PeerMsg::Release { ids: vec![obj] },
            PeerMsg::Fetch { id: obj },
            PeerMsg::Submit(Box::new(RemoteTask {
                spec: call,
                hops: 0,
                target: shoal_node::net::target(),
                locations: vec![],
                owners: vec![],
                actor_epoch: 0,
                lent: vec![],
            })),
            PeerMsg::Kill {
                actor,
                no_restart: true,
                drain: false,
                reason: "forged".into(),
                token: forged,
                moved_to: None,
            },
        ];
        for msg in &msgs {
            h.send_peer(target, msg).unwrap();
        }
        // The bytes, asked for directly: nothing comes.
        let dest = std::env::temp_dir().join(format!("shoal-authz-{}", std::process::id()));
        let object = SharedObject {
            size: SIZE as u64,
            digest: Some(Digest([0; 32])),
        };
        // The pull writes into a file made for it (as the node makes a partial file).
        std::fs::File::create(&dest).unwrap();
        let pulled = h.pull_object(&[target], obj, object, &dest).await;
        match pulled {
            Ok(n) => panic!("the intruder pulled the object ({n:?})"),
            Err(e) => eprintln!("the intruder's pull failed: {e}"),
        }
        if let Err(e) = std::fs::remove_file(&dest) {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        }
        // The driver's executable: served only to peers asked to run it.
        let fetched = h.fetch_binary(target, binary).await;
        assert!(
            matches!(
                fetched,
                Err(shoal_node::net::code::CodeError::NotAllowed(_))
            ),
            "{fetched:?}"
        );
        h
    });
    wait_for(
        Duration::from_secs(20),
        "every request to be refused",
        || {
            // Each kind, and how many of it at least (a fetch and a transfer are reads).
            let wanted = [
                ("release", 1),
                ("read", 2),
                ("call", 1),
                ("kill", 1),
                ("binary", 1),
            ];
            let all = wanted.iter().all(|(k, n)| refused(&node, k) >= *n);
            Ok(all.then_some(()))
        },
    )
    .unwrap();
    rt.block_on(h.shutdown());
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(
        log.contains("refused a peer's request it may not make"),
        "the refusal is logged"
    );

    // The driver reads its object as it was, and its actor counts on from 1.
    let stdin = driver.child_mut().stdin.as_mut().unwrap();
    stdin.write_all(b"check\n").unwrap();
    let mut result = None;
    for l in out.lines() {
        let l = l.unwrap();
        if let Some(n) = l.strip_prefix("result ") {
            result = Some(n.to_owned());
        }
    }
    assert_eq!(result.as_deref(), Some("2"), "the actor's state changed");
    let status = driver.child_mut().wait().unwrap();
    assert!(status.success(), "the driver failed");
}
