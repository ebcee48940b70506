//! A core driven by hand in unit tests: plain values in, outputs out, no shell.

use std::time::{Duration, Instant};

use shoal_protocol::{
    Arg, ArgValue, BinaryId, BinaryInfo, ClientId, ExitInfo, Hello, NodeId, ObjectId, ResourceSet,
    Role, TaskId, TaskKind, TaskSpec, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};

use shoal_protocol::mesh::PeerKey;

use super::sched::{SchedConfig, Scheduler, WorkerId};
use super::{Input, NodeCore, Output};
use crate::config::NodeConfig;
use crate::store::{StoreDone, StoreFault, StoreOp};

/// The driver's connection.
pub(super) const DRIVER: u64 = 1;
/// The binary it runs.
pub(super) const BINARY: BinaryId = BinaryId([5; 32]);

/// A node started at `now` with `cpus` CPUs and a store of `capacity` bytes, and one driver
/// attached.
pub(super) fn node(now: Instant, cpus: f64, capacity: u64) -> NodeCore {
    node_with(now, cpus, capacity, None)
}

/// [`node`], a peer of a mesh as `me`.
pub(super) fn peer_node(now: Instant, cpus: f64, capacity: u64, me: PeerKey) -> NodeCore {
    let peer = super::PeerConfig {
        me,
        target: "sim".into(),
        accepts_code: false,
        labels: Vec::new(),
        loads: super::LoadView::Full,
    };
    node_with(now, cpus, capacity, Some(peer))
}

/// Peer `n`'s id.
pub(super) fn peer_key(n: u8) -> PeerKey {
    PeerKey::from_bytes(&[n; 38]).unwrap_or_else(|| unreachable!("a valid peer id"))
}

fn node_with(now: Instant, cpus: f64, capacity: u64, peer: Option<super::PeerConfig>) -> NodeCore {
    let config = NodeConfig {
        cpus,
        store_bytes: capacity,
        embedded: false,
        gpu_devices: Vec::new(),
        ..NodeConfig::default()
    };
    let sched = Scheduler::new(SchedConfig {
        total: config.total_resources(),
        max_workers: 4,
        pipeline_depth: 1,
        short_task: Duration::from_millis(2),
        max_start_failures: 3,
        gpu_devices: Vec::new(),
    });
    let mut core = NodeCore::new(now, NodeId([1; 16]), config, sched, "/store".into(), peer);
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Driver,
        pid: 1,
        client: ClientId(7),
        binary: Some(BinaryInfo {
            id: BINARY,
            path: "/bin/driver".into(),
            manifest: None,
        }),
    };
    core.handle(
        now,
        Input::Attached {
            conn: DRIVER,
            hello,
        },
    );
    drain(&mut core);
    core
}

pub(super) fn drain(core: &mut NodeCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// Messages from process `conn`.
pub(super) fn from(core: &mut NodeCore, now: Instant, conn: u64, msg: ToNode) -> Vec<Output> {
    core.handle(
        now,
        Input::FromProc {
            conn,
            msgs: vec![msg],
        },
    );
    drain(core)
}

/// A message from the driver.
pub(super) fn send(core: &mut NodeCore, now: Instant, msg: ToNode) -> Vec<Output> {
    from(core, now, DRIVER, msg)
}

/// Process `conn` reserves `size` bytes of the store for object `id`, and the file is made
/// (the partial file a worker then writes).
pub(super) fn reserve(core: &mut NodeCore, now: Instant, conn: u64, id: ObjectId, size: u64) {
    let create = ToNode::Create {
        request: 1,
        id,
        size,
    };
    for op in ops(&from(core, now, conn, create)) {
        if op.op.is_some() {
            done(core, now, op, Ok(()));
        }
    }
    drain(core);
}

/// `worker` (process `pid`) is killed with SIGKILL.
pub(super) fn sigkill(core: &mut NodeCore, now: Instant, worker: WorkerId, pid: u32) {
    let exit = ExitInfo {
        code: None,
        signal: Some(9),
    };
    let end = super::WorkerEnd::Exited { pid, exit };
    core.handle(now, Input::WorkerExited { worker, end });
}

pub(super) fn done(core: &mut NodeCore, now: Instant, op: StoreOp, result: Result<(), StoreFault>) {
    let op = op.op.expect("an op the core waits for");
    core.handle(
        now,
        Input::Store(StoreDone {
            op,
            result,
            digest: None,
        }),
    );
}

pub(super) fn ops(out: &[Output]) -> Vec<StoreOp> {
    out.iter()
        .filter_map(|o| match o {
            Output::Store(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

/// Messages to process `conn`.
pub(super) fn to(out: &[Output], conn: u64) -> Vec<ToClient> {
    out.iter()
        .filter_map(|o| match o {
            Output::ToProc { conn: c, msg } if *c == conn => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// Messages to the driver.
pub(super) fn replies(out: &[Output]) -> Vec<ToClient> {
    to(out, DRIVER)
}

/// A function task `seq` of the driver's client, with these arguments and retries.
pub(super) fn spec(seq: u64, args: Vec<Arg>, retries: u32) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(ClientId(7), seq),
        function: "f".into(),
        binary: BINARY,
        args,
        resources: ResourceSet::cpus(1.0),
        max_retries: retries,
        owner: ClientId(7),
        kind: TaskKind::Function,
        nested: Vec::new(),
        wait_for_resources: false,
        retry_exceptions: false,
        num_returns: 1,
        strategy: Default::default(),
        label_selector: Vec::new(),
        stream: None,
        env: Vec::new(),
    }
}

/// The worker the core asked for, attached at `now` as connection `conn`.
pub(super) fn attach_worker(
    core: &mut NodeCore,
    now: Instant,
    out: &[Output],
    conn: u64,
) -> (WorkerId, Vec<Output>) {
    let worker = out
        .iter()
        .find_map(|o| match o {
            Output::SpawnWorker { worker, .. } => Some(*worker),
            _ => None,
        })
        .expect("a worker is started");
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Worker { worker_id: worker },
        pid: 100 + conn as u32,
        client: ClientId(100 + conn),
        binary: None,
    };
    core.handle(now, Input::Attached { conn, hello });
    (worker, drain(core))
}

/// The tasks handed to process `conn`, with their arguments.
pub(super) fn executed(out: &[Output], conn: u64) -> Vec<(TaskId, Vec<ArgValue>)> {
    to(out, conn)
        .into_iter()
        .filter_map(|m| match m {
            ToClient::Execute(e) => Some((e.task_id, e.args)),
            _ => None,
        })
        .collect()
}
