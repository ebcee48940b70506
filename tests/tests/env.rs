//! Environment variables of tasks and actors (the `env_vars` of Ray's `runtime_env`) on an
//! embedded node: real worker processes started with them, kept apart from the others.

use std::time::Duration;

use shoal::{ActorOptions, GetError, TaskError, TaskOptions};

/// How long any one wait here may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

/// The value of `name` in the worker, and the worker's pid.
#[shoal::remote]
fn read_var(name: String) -> (Option<String>, u32) {
    (std::env::var(&name).ok(), std::process::id())
}

/// An actor that reads its variables in its constructor.
struct Reader {
    at_start: Option<String>,
}

#[shoal::actor]
impl Reader {
    pub fn new(name: String) -> Self {
        Reader {
            at_start: std::env::var(name).ok(),
        }
    }

    pub fn at_start(&self) -> Option<String> {
        self.at_start.clone()
    }
}

#[test]
fn tasks_and_actors_run_with_their_environment_variables() {
    let var = "TEST_ENV_COLOUR".to_string();
    let with = |value: &str| TaskOptions::new().env(&var, value);
    // Two sets of variables and none, interleaved: each task sees its own, and a task
    // without any sees none (its worker was not started with them).
    let mut runs = Vec::new();
    for i in 0..6 {
        let r = match i % 3 {
            0 => read_var.options(with("red")).remote(var.clone()),
            1 => read_var.options(with("blue")).remote(var.clone()),
            _ => read_var.remote(var.clone()),
        };
        runs.push((i % 3, r));
    }
    let mut pids = [Vec::new(), Vec::new(), Vec::new()];
    for (kind, r) in runs {
        let (value, pid) = r.get_blocking_timeout(LIMIT).unwrap();
        let want = ["red", "blue"].get(kind).map(|v| v.to_string());
        assert_eq!(value, want, "kind {kind}");
        pids[kind].push(pid);
    }
    // Workers are not shared between the sets.
    for a in 0..3 {
        for b in (a + 1)..3 {
            assert!(
                pids[a].iter().all(|p| !pids[b].contains(p)),
                "a worker ran tasks of two sets: {pids:?}"
            );
        }
    }
    // A name set twice takes the last value.
    let (value, _) = read_var
        .options(with("red").env(&var, "green"))
        .remote(var.clone())
        .get_blocking_timeout(LIMIT)
        .unwrap();
    assert_eq!(value.as_deref(), Some("green"));
    // An actor's constructor sees them.
    let reader = Reader::options(ActorOptions::new().env(&var, "amber")).remote(var.clone());
    assert_eq!(
        reader
            .at_start()
            .get_blocking_timeout(LIMIT)
            .unwrap()
            .as_deref(),
        Some("amber")
    );
    shoal::kill(&reader);
}

#[test]
fn variables_that_change_how_code_loads_are_refused() {
    for (name, value) in [
        ("LD_PRELOAD", "/tmp/x.so"),
        ("DYLD_INSERT_LIBRARIES", "/tmp/x.dylib"),
        ("SHOAL_SOCKET", "/tmp/other.sock"),
        ("A=B", "c"),
        ("", "c"),
        ("NUL", "a\0b"),
    ] {
        let r = read_var
            .options(TaskOptions::new().env(name, value))
            .remote(name.to_string());
        match r.get_blocking_timeout(LIMIT) {
            Err(GetError::Task(TaskError::InvalidOptions { reason })) => {
                assert!(reason.contains("environment variable"), "{reason}")
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    // Over 64 KiB in all.
    let big = "x".repeat(64 * 1024 + 1);
    let r = read_var
        .options(TaskOptions::new().env("BIG", &big))
        .remote("BIG".to_string());
    assert!(matches!(
        r.get_blocking_timeout(LIMIT),
        Err(GetError::Task(TaskError::InvalidOptions { .. }))
    ));
}
