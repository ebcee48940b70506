//! Remote functions on an embedded node: real worker processes, real sockets.

use std::time::Duration;

use shoal::{GetError, TaskError, TaskOptions};
use shoal_tests::parent_of;

#[shoal::remote]
fn pid() -> u32 {
    std::process::id()
}

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[shoal::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[shoal::remote]
fn boom(msg: String) -> u32 {
    panic!("{msg}")
}

#[shoal::remote]
async fn async_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    x * 2
}

#[shoal::remote]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A task that submits tasks and waits for them (its CPU is lent out while it waits).
#[shoal::remote]
fn sum_of_squares(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(|i| square.remote(i)).collect();
    refs.iter()
        .map(|r| r.get_blocking().expect("child task"))
        .sum()
}

#[test]
fn tasks_run_in_other_processes() {
    shoal::init().unwrap();
    let worker_pid = pid.remote().get_blocking().unwrap();
    assert_ne!(worker_pid, std::process::id());
    // The worker is a child of this process (the embedded node started it).
    assert_eq!(parent_of(worker_pid), Some(std::process::id()));
}

#[test]
fn a_thousand_tasks_give_correct_results() {
    let refs: Vec<_> = (0..1000u64).map(|i| square.remote(i)).collect();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(r.get_blocking().unwrap(), (i * i) as u64);
    }
}

#[test]
fn refs_are_arguments() {
    let a = add.remote(1, 2);
    let b = add.remote(&a, 10);
    let c = add.remote(&a, &b);
    assert_eq!(c.get_blocking().unwrap(), 16);
    let p = shoal::put(&40i64).unwrap();
    assert_eq!(add.remote(p, 2).get_blocking().unwrap(), 42);
}

#[test]
fn panics_are_typed_errors_and_the_next_task_runs() {
    let r = boom
        .options(TaskOptions::new().max_retries(5))
        .remote("kaboom 42");
    match r.get_blocking() {
        Err(GetError::Task(TaskError::Panicked { message, .. })) => {
            assert_eq!(message, "kaboom 42")
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    assert_eq!(square.remote(7).get_blocking().unwrap(), 49);
    // A task depending on a failed one fails with the same error.
    let failed = boom_i64.remote();
    let dependent = add.remote(&failed, 1);
    assert!(matches!(
        dependent.get_blocking(),
        Err(GetError::Task(TaskError::Panicked { .. }))
    ));
}

/// Ray's `RayTaskError` names the function, the pid and the ip: a panic's error names the
/// function, where in the source it panicked, the worker's pid, and (when `RUST_BACKTRACE`
/// asks, see the next test) the backtrace.
#[test]
fn a_panic_names_its_function_place_and_process() {
    let r = boom.remote("named");
    let Err(GetError::Task(e @ TaskError::Panicked { .. })) = r.get_blocking() else {
        panic!("expected a panic");
    };
    let TaskError::Panicked { message, origin } = &e else {
        unreachable!()
    };
    assert_eq!(message, "named");
    let origin = origin.as_ref().expect("where it panicked");
    assert_eq!(origin.function, "tasks::boom");
    let at = origin.location.as_deref().expect("a location");
    assert!(at.starts_with("tests/tests/tasks.rs:"), "{at}");
    assert_ne!(origin.pid, std::process::id());
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "task panicked: named (in tasks::boom at {at}, pid {}",
            origin.pid
        )),
        "{text}"
    );
}

#[test]
fn with_rust_backtrace_set_a_panic_carries_its_backtrace() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "backtrace_entry", "--nocapture", "--quiet"])
        .env("SHOAL_TEST_BACKTRACE", "1")
        .env("RUST_BACKTRACE", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let error = stdout
        .split_once("error: ")
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no error line in {stdout:?}"));
    assert!(
        error.contains("(in tasks::boom at tests/tests/tasks.rs:"),
        "{error}"
    );
    assert!(error.contains("\nstack backtrace:\n"), "{error}");
    assert!(
        error.contains("tasks::boom"),
        "the backtrace names the function: {error}"
    );
}

/// The program of `with_rust_backtrace_set_a_panic_carries_its_backtrace`, on a node of its
/// own (a no-op otherwise).
#[test]
fn backtrace_entry() {
    if std::env::var_os("SHOAL_TEST_BACKTRACE").is_none() {
        return;
    }
    shoal::init_with(shoal::InitOptions {
        force_embedded: true,
        ..Default::default()
    })
    .unwrap();
    let e = boom.remote("traced").get_blocking().unwrap_err();
    println!("error: {e}");
}

#[shoal::remote(max_calls = 1)]
fn pid_once() -> u32 {
    std::process::id()
}

#[shoal::remote(max_calls = 2)]
fn pid_twice() -> u32 {
    std::process::id()
}

/// Ray's `max_calls`: a worker runs the function that many times, then a fresh process takes
/// its place; tasks handed to it meanwhile run elsewhere.
#[test]
fn max_calls_replaces_a_worker_after_that_many_runs() {
    let one_by_one: std::collections::HashSet<u32> = (0..4)
        .map(|_| pid_once.remote().get_blocking().unwrap())
        .collect();
    assert_eq!(one_by_one.len(), 4, "{one_by_one:?}");
    // Many at once, some of them queued at a worker that retires: each runs once, in a
    // process of its own.
    let refs: Vec<_> = (0..8).map(|_| pid_once.remote()).collect();
    let at_once: std::collections::HashSet<u32> =
        refs.iter().map(|r| r.get_blocking().unwrap()).collect();
    assert_eq!(at_once.len(), 8, "{at_once:?}");
    assert!(at_once.is_disjoint(&one_by_one));
    let refs: Vec<_> = (0..10).map(|_| pid_twice.remote()).collect();
    let mut runs = std::collections::HashMap::<u32, u32>::new();
    for r in &refs {
        *runs.entry(r.get_blocking().unwrap()).or_default() += 1;
    }
    assert!(runs.values().all(|n| *n <= 2), "{runs:?}");
    // Other functions still share workers.
    assert_eq!(square.remote(9).get_blocking().unwrap(), 81);
}

#[shoal::remote]
fn boom_i64() -> i64 {
    panic!("boom_i64")
}

#[test]
fn async_functions_and_async_get() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let refs: Vec<_> = (0..20u64).map(|i| async_double.remote(i)).collect();
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(r.get().await.unwrap(), 2 * i as u64);
        }
    });
}

#[test]
fn tasks_submit_tasks() {
    // More parents than CPUs: they only finish because a waiting parent lends its CPU.
    let parents: Vec<_> = (0..4).map(|_| sum_of_squares.remote(10)).collect();
    for p in parents {
        assert_eq!(
            p.get_blocking_timeout(Duration::from_secs(60)).unwrap(),
            285
        );
    }
}

#[test]
fn wait_returns_ready_and_pending() {
    let slow = sleepy
        .options(TaskOptions::new().num_cpus(0.0))
        .remote(3000);
    let fast = sleepy.options(TaskOptions::new().num_cpus(0.0)).remote(1);
    let refs = vec![slow.clone(), fast.clone()];
    // No timeout: it returns when the fast one is done, not the first one listed.
    let (ready, pending) = shoal::wait_blocking(&refs, 1, None).unwrap();
    assert_eq!(ready, vec![fast.clone()]);
    assert_eq!(pending, vec![slow.clone()]);
    // A timeout returns what is ready so far.
    let (ready, pending) = shoal::wait_blocking(&refs, 2, Some(Duration::from_millis(50))).unwrap();
    assert_eq!((ready.len(), pending.len()), (1, 1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ready, pending) = shoal::wait(&refs, 2, Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!((ready.len(), pending.len()), (2, 0));
    });
}

#[test]
fn get_times_out() {
    let r = sleepy
        .options(TaskOptions::new().num_cpus(0.0))
        .remote(2000);
    assert!(matches!(
        r.get_blocking_timeout(Duration::from_millis(20)),
        Err(GetError::Timeout(_))
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(matches!(
            r.get_timeout(Duration::from_millis(20)).await,
            Err(GetError::Timeout(_))
        ));
        assert_eq!(r.get_timeout(Duration::from_secs(20)).await.unwrap(), 2000);
    });
}

#[test]
fn infeasible_demands_fail_at_once() {
    let r = square.options(TaskOptions::new().num_cpus(64.0)).remote(1);
    assert!(matches!(
        r.get_blocking(),
        Err(GetError::Task(TaskError::Infeasible { .. }))
    ));
    let r = square
        .options(TaskOptions::new().resource("tpu", 1.0))
        .remote(1);
    assert!(matches!(
        r.get_blocking(),
        Err(GetError::Task(TaskError::Infeasible { .. }))
    ));
}

#[test]
fn bad_arguments_and_unknown_functions_are_typed_errors() {
    use shoal::__private::{submit, ArgBuf};
    // Bytes that are not a u64: the worker cannot decode them.
    let r = submit::<u64>(
        square::NAME,
        &TaskOptions::new(),
        vec![ArgBuf::Value(Ok((vec![0xff; 3], Vec::new())))],
    );
    match r.get_blocking() {
        Err(GetError::Task(TaskError::ArgDecode { index: 0, .. })) => {}
        other => panic!("expected ArgDecode, got {other:?}"),
    }
    let r = submit::<u64>("no::such::function", &TaskOptions::new(), vec![]);
    match r.get_blocking() {
        Err(GetError::Task(TaskError::NoSuchFunction { name })) => {
            assert_eq!(name, "no::such::function")
        }
        other => panic!("expected NoSuchFunction, got {other:?}"),
    }
    // A result of the wrong type is a decode error on get.
    let r = submit::<String>(
        square::NAME,
        &TaskOptions::new(),
        vec![shoal::IntoArg::<u64>::into_arg(300u64)],
    );
    assert!(matches!(r.get_blocking(), Err(GetError::Decode(_))));
}

#[test]
fn status_shows_resources_workers_and_objects() {
    let shoal = shoal::init().unwrap();
    square.remote(3).get_blocking().unwrap();
    let _keep = shoal::put(&vec![1u8; 200_000]).unwrap();
    let s = shoal.status().unwrap();
    assert!(s.embedded);
    assert_eq!(s.node_id, shoal.node_id());
    assert!(s.resources_total.get_milli("CPU") >= 1000);
    assert!(!s.workers.is_empty());
    assert!(s.tasks_finished >= 1);
    assert!(s.objects.shared_count >= 1, "{:?}", s.objects);
}

#[test]
fn a_ref_to_an_object_nobody_has_is_lost_not_a_hang() {
    shoal::init().unwrap();
    // A well-formed reference to an object that never existed (as a freed one would be).
    let bytes = shoal_protocol::codec::encode(&(shoal::ObjectId([7; 32]), 1u64)).unwrap();
    let r: shoal::ObjectRef<u64> = shoal_protocol::codec::decode(&bytes, 1024).unwrap();
    assert!(matches!(
        r.get_blocking_timeout(Duration::from_secs(20)),
        Err(GetError::Task(TaskError::ObjectLost { .. }))
    ));
    // As an argument, it fails the task the same way.
    let t = square.remote(&r);
    assert!(matches!(
        t.get_blocking_timeout(Duration::from_secs(20)),
        Err(GetError::Task(TaskError::ObjectLost { .. }))
    ));
}
