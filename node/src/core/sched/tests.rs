use super::*;

fn config(cpus: f64) -> SchedConfig {
    SchedConfig {
        total: ResourceSet::cpus(cpus).with("gpu", 1.0),
        max_workers: 4,
        pipeline_depth: 4,
        short_task: Duration::from_millis(2),
        max_start_failures: 3,
        gpu_devices: Vec::new(),
    }
}

fn task(n: u64) -> TaskId {
    TaskId::new(shoal_protocol::ClientId(1), n)
}

const BIN: BinaryId = BinaryId([1; 32]);

fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn spawned(actions: &[Action]) -> Vec<WorkerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}

#[test]
fn tasks_wait_for_cpu_slots_and_reuse_workers() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(2.0));
    s.binary_attached(BIN);
    for n in 0..3 {
        s.submit(t0, task(n), BIN, ResourceSet::cpus(1.0));
    }
    let a = drain(&mut s);
    let w = spawned(&a);
    assert_eq!(w.len(), 2, "one worker per free CPU: {a:?}");
    assert_eq!(s.free().get_milli("CPU"), 0);
    assert!(s.worker_connected(t0, w[0], 100));
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: w[0],
            task: task(0)
        }]
    );
    s.worker_connected(t0, w[1], 101);
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: w[1],
            task: task(1)
        }]
    );
    assert_eq!(s.queued(), 1);
    assert_eq!(s.running(), 2);
    // A long task finishes: the next one goes to the same worker, no pipelining.
    let t1 = t0 + Duration::from_secs(1);
    s.task_done(t1, w[0], task(0));
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: w[0],
            task: task(2)
        }]
    );
    s.task_done(t1, w[1], task(1));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.free().get_milli("CPU"), 1000, "worker 1's lease ended");
    s.task_done(t1, w[0], task(2));
    assert_eq!(s.free().get_milli("CPU"), 2000);
    assert_eq!(s.finished(), 3);
    assert!(s.worker_status().iter().all(|w| w.state == "idle"));
}

#[test]
fn infeasible_demand_fails_at_once() {
    let mut s = Scheduler::new(config(2.0));
    s.submit(Instant::now(), task(1), BIN, ResourceSet::cpus(64.0));
    s.submit(
        Instant::now(),
        task(2),
        BIN,
        ResourceSet::cpus(1.0).with("tpu", 1.0),
    );
    let a = drain(&mut s);
    assert!(
        matches!(&a[0], Action::Fail { task: t, error: TaskError::Infeasible { .. } } if *t == task(1))
    );
    assert!(
        matches!(&a[1], Action::Fail { task: t, error: TaskError::Infeasible { .. } } if *t == task(2))
    );
    assert_eq!(s.queued(), 0);
}

#[test]
fn short_tasks_are_pipelined() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    for n in 0..10 {
        s.submit(t0, task(n), BIN, ResourceSet::cpus(1.0));
    }
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 7);
    assert_eq!(drain(&mut s).len(), 1, "run time unknown: one at a time");
    s.task_done(t0 + Duration::from_micros(50), w, task(0));
    let a = drain(&mut s);
    assert_eq!(a.len(), 4, "short shape: pipeline depth 4: {a:?}");
    assert_eq!(s.running(), 4);
    assert_eq!(s.queued(), 5);
}

#[test]
fn dead_worker_returns_its_tasks_and_is_replaced() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 9);
    drain(&mut s);
    let lost = s.worker_exited(t0, w);
    assert_eq!(lost, vec![task(1)]);
    assert_eq!(s.free().get_milli("CPU"), 1000);
    let a = drain(&mut s);
    assert_eq!(spawned(&a).len(), 1, "replacement: {a:?}");
    // The caller resubmits the retry; it takes the replacement once it connects.
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    let w2 = spawned(&a)[0];
    s.worker_connected(t0, w2, 10);
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: w2,
            task: task(1)
        }]
    );
}

#[test]
fn blocked_worker_lends_its_cpu() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 9);
    drain(&mut s);
    s.submit(t0, task(2), BIN, ResourceSet::cpus(1.0));
    assert!(drain(&mut s).is_empty(), "no CPU free");
    s.worker_blocked(t0, w);
    let a = drain(&mut s);
    assert_eq!(spawned(&a).len(), 1, "the child task gets a worker: {a:?}");
    s.worker_unblocked(w);
    assert_eq!(s.worker_status()[0].state, "busy");
}

/// Tasks blocked in a `get` of their children's results hold their workers, not the cap:
/// with every worker of the pool blocked (here `max_workers` = 4 nested tasks on one CPU),
/// the children still get workers, or the nested tasks wait for them forever. Once the
/// nested tasks end, workers beyond the cap are stopped as they go idle.
#[test]
fn blocked_workers_do_not_count_against_the_cap() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    let mut parents = Vec::new();
    for n in 0..4 {
        s.submit(t0, task(n), BIN, ResourceSet::cpus(1.0));
        let a = drain(&mut s);
        let w = spawned(&a);
        assert_eq!(w.len(), 1, "parent {n} gets a worker: {a:?}");
        s.worker_connected(t0, w[0], 100 + n as u32);
        assert_eq!(drain(&mut s).len(), 1, "parent {n} dispatched");
        s.worker_blocked(t0, w[0]);
        parents.push(w[0]);
    }
    assert_eq!(s.worker_status().len(), 4, "the pool is at its cap");
    // A child of the last parent: the pool is full, but of blocked workers.
    s.submit(t0, task(10), BIN, ResourceSet::cpus(1.0));
    let a = drain(&mut s);
    let child = spawned(&a);
    assert_eq!(
        child.len(),
        1,
        "the child gets a worker past the cap: {a:?}"
    );
    s.worker_connected(t0, child[0], 200);
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: child[0],
            task: task(10)
        }]
    );
    s.task_done(t0, child[0], task(10));
    drain(&mut s);
    // The parents end one by one: the pool shrinks back to its cap as they go idle.
    for (n, w) in parents.iter().enumerate() {
        s.worker_unblocked(*w);
        s.task_done(t0, *w, task(n as u64));
        drain(&mut s);
    }
    assert_eq!(s.worker_status().len(), 4, "{:?}", s.worker_status());
    assert!(s.worker_status().iter().all(|w| w.state == "idle"));
    assert_eq!(s.free().get_milli("CPU"), 1000);
}

#[test]
fn workers_that_never_start_fail_the_binary() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    for _ in 0..3 {
        let a = drain(&mut s);
        let w = spawned(&a);
        assert_eq!(w.len(), 1, "{a:?}");
        s.worker_exited(t0, w[0]);
    }
    let a = drain(&mut s);
    assert!(
        matches!(
            &a[..],
            [Action::Fail {
                error: TaskError::WorkerStart { .. },
                ..
            }]
        ),
        "{a:?}"
    );
    assert_eq!(s.free().get_milli("CPU"), 1000);
}

#[test]
fn detached_binary_workers_are_stopped() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 9);
    drain(&mut s);
    s.binary_detached(BIN);
    assert!(drain(&mut s).is_empty(), "busy worker kept until done");
    s.task_done(t0, w, task(1));
    assert_eq!(drain(&mut s), vec![Action::Kill { worker: w }]);
    assert!(s.worker_status().is_empty());
}

#[test]
fn zero_cpu_tasks_do_not_need_cpus() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    s.submit(t0, task(2), BIN, ResourceSet::new());
    let a = drain(&mut s);
    assert_eq!(spawned(&a).len(), 2, "{a:?}");
    s.submit(t0, task(3), BIN, ResourceSet::new().with("gpu", 1.0));
    s.submit(t0, task(4), BIN, ResourceSet::new().with("gpu", 1.0));
    assert_eq!(spawned(&drain(&mut s)).len(), 1, "one gpu, one worker");
}

#[test]
fn returned_tasks_go_back_to_the_front() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    for n in 0..6 {
        s.submit(t0, task(n), BIN, ResourceSet::cpus(1.0));
    }
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 7);
    drain(&mut s);
    s.task_done(t0 + Duration::from_micros(50), w, task(0));
    assert_eq!(drain(&mut s).len(), 4, "pipelined 1..=4");
    // Task 1 runs and blocks; 2..=4 come back and go to a new worker, in order.
    s.worker_blocked(t0, w);
    s.tasks_returned(t0, w, &[task(2), task(3), task(4)]);
    let a = drain(&mut s);
    let w2 = spawned(&a);
    assert_eq!(w2.len(), 1, "{a:?}");
    s.worker_connected(t0, w2[0], 8);
    let a = drain(&mut s);
    assert_eq!(
        a[0],
        Action::Dispatch {
            worker: w2[0],
            task: task(2)
        }
    );
    assert_eq!(s.running(), 1 + a.len());
}

#[test]
fn actors_lease_a_dedicated_worker_and_hold_their_demand() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(2.0));
    s.binary_attached(BIN);
    // A zero-CPU actor needs no CPU; a 2-CPU actor takes both; a third waits for room.
    s.submit_actor(t0, task(1), BIN, ResourceSet::new());
    s.submit_actor(t0, task(2), BIN, ResourceSet::cpus(2.0));
    s.submit_actor(t0, task(3), BIN, ResourceSet::cpus(1.0));
    let a = drain(&mut s);
    let w = spawned(&a);
    assert_eq!(w.len(), 2, "{a:?}");
    assert_eq!(s.free().get_milli("CPU"), 0);
    assert_eq!(s.actors_queued(), 1);
    // Actor workers do not count against the task pool.
    for n in 10..14 {
        s.submit(t0, task(n), BIN, ResourceSet::new());
    }
    assert_eq!(spawned(&drain(&mut s)).len(), 4);
    assert!(s.worker_connected(t0, w[0], 100));
    assert_eq!(
        drain(&mut s),
        vec![Action::HostActor {
            worker: w[0],
            task: task(1)
        }]
    );
    // The 2-CPU actor's process dies: its CPUs free up, the queued actor gets a worker, and
    // the caller learns which actor lost its process.
    assert!(s.worker_connected(t0, w[1], 101));
    drain(&mut s);
    assert_eq!(s.worker_exited(t0, w[1]), vec![task(2)]);
    let a = drain(&mut s);
    assert_eq!(spawned(&a).len(), 1, "{a:?}");
    assert_eq!(s.free().get_milli("CPU"), 1000);
    // Ending an actor stops its worker and frees what it held.
    s.end_actor(t0, task(1));
    assert_eq!(drain(&mut s), vec![Action::Kill { worker: w[0] }]);
    assert_eq!(s.worker_exited(t0, w[0]), Vec::<TaskId>::new());
}

#[test]
fn infeasible_actors_fail_and_idle_workers_are_reused() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(2.0));
    s.binary_attached(BIN);
    s.submit_actor(t0, task(1), BIN, ResourceSet::cpus(3.0));
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Fail {
            error: TaskError::Infeasible { .. },
            ..
        }]
    ));
    // A task leaves an idle worker behind; the next actor takes it instead of spawning.
    s.submit(t0, task(2), BIN, ResourceSet::cpus(1.0));
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 100);
    drain(&mut s);
    s.task_done(t0, w, task(2));
    drain(&mut s);
    s.submit_actor(t0, task(3), BIN, ResourceSet::cpus(1.0));
    assert_eq!(
        drain(&mut s),
        vec![Action::HostActor {
            worker: w,
            task: task(3)
        }]
    );
    let status = s.worker_status();
    assert_eq!(status[0].state, "actor");
}

#[test]
fn a_retiring_worker_takes_no_more_tasks_and_stops_once_it_holds_none() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(config(1.0));
    s.binary_attached(BIN);
    s.submit(t0, task(0), BIN, ResourceSet::cpus(1.0));
    let w = spawned(&drain(&mut s))[0];
    s.worker_connected(t0, w, 100);
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: w,
            task: task(0)
        }]
    );
    // It ran its function's max_calls, and the next task was sent to it meanwhile.
    s.submit(t0, task(1), BIN, ResourceSet::cpus(1.0));
    s.task_done(t0, w, task(0));
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: w,
            task: task(1)
        }]
    );
    s.retire(t0, w);
    assert!(drain(&mut s).is_empty(), "it still holds task 1");
    // It hands that task back: it is stopped, and a fresh worker runs the task.
    s.tasks_returned(t0, w, &[task(1)]);
    let actions = drain(&mut s);
    assert!(actions.contains(&Action::Kill { worker: w }), "{actions:?}");
    let fresh = spawned(&actions);
    assert_eq!(fresh.len(), 1, "{actions:?}");
    assert_ne!(fresh[0], w);
    s.worker_connected(t0, fresh[0], 101);
    assert_eq!(
        drain(&mut s),
        vec![Action::Dispatch {
            worker: fresh[0],
            task: task(1)
        }]
    );
    assert_eq!(
        s.free().get_milli("CPU"),
        0,
        "one lease, the fresh worker's"
    );
    // An idle worker that retires stops at once.
    s.task_done(t0, fresh[0], task(1));
    s.retire(t0, fresh[0]);
    assert_eq!(drain(&mut s), vec![Action::Kill { worker: fresh[0] }]);
    assert_eq!(s.free().get_milli("CPU"), 1000);
}

#[test]
fn a_lease_that_holds_gpus_is_given_devices_until_it_ends() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedConfig {
        total: ResourceSet::cpus(4.0).with(GPU, 2.0),
        gpu_devices: vec![4, 7],
        ..config(4.0)
    });
    s.binary_attached(BIN);
    let one_gpu = ResourceSet::cpus(1.0).with(GPU, 1.0);
    s.submit(t0, task(1), BIN, one_gpu.clone());
    s.submit(t0, task(2), BIN, one_gpu.clone());
    let w = spawned(&drain(&mut s));
    assert_eq!(w.len(), 2);
    for (i, pid) in [(0, 100), (1, 101)] {
        s.worker_connected(t0, w[i], pid);
    }
    drain(&mut s);
    let (a, shared) = s.gpu_ids(w[0]);
    assert!(!shared);
    assert_eq!(s.gpu_ids(w[0]).0, a, "kept while the lease lasts");
    let (b, _) = s.gpu_ids(w[1]);
    assert_eq!([a.clone(), b.clone()].concat().len(), 2);
    assert_ne!(a, b);
    assert!([4, 7].contains(&a[0]) && [4, 7].contains(&b[0]));
    // Worker 0's lease ends (its worker idles): its device goes to the next lease.
    let t1 = t0 + Duration::from_secs(1);
    s.task_done(t1, w[0], task(1));
    s.submit(t1, task(3), BIN, ResourceSet::cpus(1.0));
    let next = drain(&mut s);
    assert_eq!(
        next,
        vec![Action::Dispatch {
            worker: w[0],
            task: task(3)
        }]
    );
    assert_eq!(s.gpu_ids(w[0]), (vec![], false), "a lease of no GPU: none");
    s.submit(t1, task(4), BIN, one_gpu);
    let w2 = spawned(&drain(&mut s));
    s.worker_connected(t1, w2[0], 102);
    drain(&mut s);
    assert_eq!(
        s.gpu_ids(w2[0]),
        (a, false),
        "the device worker 0 gave back"
    );
    // A worker that is not leased holds none.
    assert_eq!(s.gpu_ids(999), (vec![], false));
}
