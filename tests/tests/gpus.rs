//! GPU ids (Ray's `get_gpu_ids()` and `CUDA_VISIBLE_DEVICES`) on an embedded node with two
//! GPUs, as `--resource GPU=2` declares them: real worker processes, each given particular
//! devices while it holds `GPU`. (No device is opened: the node hands out ids, whatever the
//! machine has.)

use std::time::Duration;

use shoal::{ActorHandle, ActorOptions, InitOptions, TaskOptions};

/// How long any one wait here may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

fn init() -> shoal::Shoal {
    shoal::init_with(InitOptions {
        force_embedded: true,
        cpus: Some(4.0),
        resources: vec![("GPU".to_string(), 2.0)],
        ..Default::default()
    })
    .expect("an embedded node")
}

/// Lets `n` callers through together, so that their tasks provably overlap.
struct Gate {
    arrived: tokio::sync::watch::Sender<u32>,
}

#[shoal::actor]
impl Gate {
    pub fn new() -> Self {
        Gate {
            arrived: tokio::sync::watch::channel(0).0,
        }
    }

    /// Waits until `n` calls arrived in all (at most a minute): whether they did.
    pub async fn meet(&self, n: u32) -> bool {
        self.arrived.send_modify(|a| *a += 1);
        let mut seen = self.arrived.subscribe();
        let met = tokio::time::timeout(LIMIT, seen.wait_for(|a| *a >= n))
            .await
            .is_ok();
        met
    }
}

/// What a task sees of its devices: `gpu_ids()` and `CUDA_VISIBLE_DEVICES`, read once `n`
/// tasks are running together.
#[shoal::remote]
fn devices(gate: ActorHandle<Gate>, n: u32) -> (Vec<u32>, Option<String>) {
    assert!(
        gate.meet(n).get_blocking().unwrap(),
        "the others never came"
    );
    (shoal::gpu_ids(), std::env::var("CUDA_VISIBLE_DEVICES").ok())
}

/// What a task that holds no GPU sees.
#[shoal::remote]
fn no_devices() -> (Vec<u32>, Vec<u32>) {
    (shoal::gpu_ids(), shoal::runtime_context().gpu_ids)
}

/// An actor that holds devices for its life.
struct Trainer {
    /// `CUDA_VISIBLE_DEVICES` as its constructor saw it.
    at_start: Option<String>,
}

#[shoal::actor]
impl Trainer {
    pub fn new() -> Self {
        Trainer {
            at_start: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        }
    }

    pub fn devices(&self) -> (Vec<u32>, Option<String>) {
        (shoal::runtime_context().gpu_ids, self.at_start.clone())
    }
}

fn listed(ids: &[u32]) -> Option<String> {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    Some(ids.join(","))
}

#[test]
fn tasks_and_actors_are_given_their_own_devices() {
    let _node = init();
    // Two tasks of one GPU each, running together: one device each, as listed in
    // CUDA_VISIBLE_DEVICES.
    let gate = Gate::remote();
    let one = || TaskOptions::new().num_gpus(1.0);
    let a = devices.options(one()).remote(gate.clone(), 2);
    let b = devices.options(one()).remote(gate.clone(), 2);
    let (a, a_env) = a.get_blocking_timeout(LIMIT).unwrap();
    let (b, b_env) = b.get_blocking_timeout(LIMIT).unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_ne!(a, b, "two tasks running together on one device");
    assert!(a[0] < 2 && b[0] < 2, "{a:?} {b:?}");
    assert_eq!(a_env, listed(&a));
    assert_eq!(b_env, listed(&b));
    // Both: the two devices.
    let gate = Gate::remote();
    let (both, env) = devices
        .options(TaskOptions::new().num_gpus(2.0))
        .remote(gate, 1)
        .get_blocking_timeout(LIMIT)
        .unwrap();
    assert_eq!(both, vec![0, 1]);
    assert_eq!(env.as_deref(), Some("0,1"));
    // Four halves running together: two on each device.
    let gate = Gate::remote();
    let halves: Vec<_> = (0..4)
        .map(|_| {
            devices
                .options(TaskOptions::new().num_gpus(0.5))
                .remote(gate.clone(), 4)
        })
        .collect();
    let mut per_device = [0; 2];
    for h in halves {
        let (ids, _) = h.get_blocking_timeout(LIMIT).unwrap();
        assert_eq!(ids.len(), 1, "{ids:?}");
        per_device[ids[0] as usize] += 1;
    }
    assert_eq!(per_device, [2, 2]);
    // A task that holds no GPU is given none.
    assert_eq!(
        no_devices.remote().get_blocking_timeout(LIMIT).unwrap(),
        (vec![], vec![])
    );
    // An actor holds its device for its life, set before its constructor ran; a task
    // meanwhile gets the other.
    let trainer = Trainer::options(ActorOptions::new().num_gpus(1.0)).remote();
    let (held, at_start) = trainer.devices().get_blocking_timeout(LIMIT).unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(at_start, listed(&held));
    for _ in 0..3 {
        let (other, _) = devices
            .options(one())
            .remote(Gate::remote(), 1)
            .get_blocking_timeout(LIMIT)
            .unwrap();
        assert_eq!(other.len(), 1);
        assert_ne!(other, held, "a task on the actor's device");
    }
    shoal::kill(&trainer);
}
