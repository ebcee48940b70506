use std::collections::HashSet;

use shoal_protocol::{ExitInfo, TaskError};

use super::*;

fn spec(n: u8, name: Option<&str>) -> ActorCreate {
    ActorCreate {
        actor_id: ActorId([n; 16]),
        token: ActorToken([n; 16]),
        name: name.map(str::to_string),
        get_if_exists: false,
        max_restarts: 0,
        max_concurrency: 1,
        detached: false,
        concurrency_groups: Vec::new(),
        max_task_retries: 0,
    }
}

fn task(client: u64, seq: u64) -> TaskId {
    TaskId::new(ClientId(client), seq)
}

fn died() -> TaskError {
    TaskError::ActorDied {
        actor: ActorId([1; 16]),
        pid: 7,
        exit: ExitInfo {
            code: None,
            signal: Some(9),
        },
    }
}

#[test]
fn names_are_unique_and_get_or_create_finds_the_live_one() {
    let mut t = ActorTable::new();
    let a = spec(1, Some("ps"));
    assert_eq!(
        t.register(task(1, 1), "C", &a, ClientId(1)),
        Ok(Registered::New)
    );
    let b = spec(2, Some("ps"));
    assert_eq!(
        t.register(task(2, 1), "C", &b, ClientId(2)),
        Err(TaskError::ActorNameTaken { name: "ps".into() })
    );
    let c = ActorCreate {
        get_if_exists: true,
        ..spec(3, Some("ps"))
    };
    assert_eq!(
        t.register(task(2, 2), "C", &c, ClientId(2)),
        Ok(Registered::Existing(a.actor_id))
    );
    // Another class under the same name is not "the same actor".
    assert!(t.register(task(2, 3), "D", &c, ClientId(2)).is_err());
    assert_eq!(t.lookup("ps").map(|i| i.actor_id), Some(a.actor_id));
    // Once dead, the name is free.
    t.kill(
        a.actor_id,
        TaskError::ActorKilled {
            actor: a.actor_id,
            reason: "test".into(),
        },
    );
    assert_eq!(t.lookup("ps"), None);
    assert_eq!(
        t.register(task(2, 4), "C", &b, ClientId(2)),
        Ok(Registered::New)
    );
}

#[test]
fn calls_leave_in_order_per_caller_and_only_when_ready() {
    let mut t = ActorTable::new();
    let a = spec(1, None);
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    let id = a.actor_id;
    for seq in 1..=3 {
        t.enqueue(id, ClientId(1), task(1, seq)).unwrap();
        t.enqueue(id, ClientId(2), task(2, seq)).unwrap();
    }
    // Nothing leaves before the actor is hosted.
    assert_eq!(t.take_ready(id, |_| true), (None, vec![]));
    t.hosted(id, 5);
    // Caller 1's second call waits for an argument: its third waits behind it; caller 2 is
    // not held back.
    let not_ready = task(1, 2);
    let (w, out) = t.take_ready(id, |x| x != not_ready);
    assert_eq!(w, Some(5));
    assert_eq!(out, vec![task(1, 1), task(2, 1), task(2, 2), task(2, 3)]);
    let (_, out) = t.take_ready(id, |_| true);
    assert_eq!(out, vec![task(1, 2), task(1, 3)]);
    assert!(t.call_done(id, task(1, 1)));
    assert!(!t.call_done(id, task(1, 1)));
    assert_eq!(t.get(&id).unwrap().calls_done, 1);
}

#[test]
fn inflight_follows_a_max_concurrency_above_the_bound() {
    let mut t = ActorTable::new();
    let mut a = spec(1, None);
    a.max_concurrency = 8000;
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    t.hosted(a.actor_id, 1);
    for seq in 0..4000 {
        t.enqueue(a.actor_id, ClientId(1), task(1, seq)).unwrap();
    }
    // All at the worker at once: each may wait for the others.
    let (_, out) = t.take_ready(a.actor_id, |_| true);
    assert_eq!(out.len(), 4000);
}

#[test]
fn inflight_is_bounded() {
    let mut t = ActorTable::new();
    let a = spec(1, None);
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    t.hosted(a.actor_id, 1);
    for seq in 0..(MAX_INFLIGHT as u64 + 10) {
        t.enqueue(a.actor_id, ClientId(1), task(1, seq)).unwrap();
    }
    let (_, out) = t.take_ready(a.actor_id, |_| true);
    assert_eq!(out.len(), MAX_INFLIGHT);
    assert!(t.call_done(a.actor_id, out[0]));
    let (_, more) = t.take_ready(a.actor_id, |_| true);
    assert_eq!(more, vec![task(1, MAX_INFLIGHT as u64)]);
}

#[test]
fn death_fails_inflight_calls_and_restarts_within_budget() {
    let mut t = ActorTable::new();
    let a = ActorCreate {
        max_restarts: 1,
        ..spec(1, Some("r"))
    };
    let id = a.actor_id;
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    t.hosted(id, 1);
    t.started(id, 100);
    t.enqueue(id, ClientId(1), task(1, 1)).unwrap();
    t.enqueue(id, ClientId(1), task(1, 2)).unwrap();
    let (_, out) = t.take_ready(id, |x| x == task(1, 1));
    assert_eq!(out, vec![task(1, 1)]);
    assert_eq!(t.by_worker(1), Some(id));

    // First death: the call in flight fails, the queued one waits for the restart.
    let (inflight, after) = t.worker_lost(id, died());
    assert_eq!(inflight, vec![task(1, 1)]);
    assert_eq!(after, AfterDeath::Restart);
    assert_eq!(t.by_worker(1), None);
    assert_eq!(t.get(&id).unwrap().incarnation, 1);
    t.hosted(id, 2);
    t.started(id, 101);
    let (w, out) = t.take_ready(id, |_| true);
    assert_eq!((w, out), (Some(2), vec![task(1, 2)]));

    // Second death: no restarts left; later calls are refused with the cause.
    t.enqueue(id, ClientId(1), task(1, 3)).unwrap();
    let (inflight, after) = t.worker_lost(id, died());
    assert_eq!(inflight, vec![task(1, 2)]);
    assert_eq!(after, AfterDeath::Dead(vec![task(1, 3)]));
    assert_eq!(t.enqueue(id, ClientId(1), task(1, 4)), Err(died()));
    assert_eq!(t.lookup("r"), None);
}

#[test]
fn a_failed_constructor_is_never_restarted() {
    let mut t = ActorTable::new();
    let a = ActorCreate {
        max_restarts: u32::MAX,
        ..spec(1, None)
    };
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    t.hosted(a.actor_id, 1);
    let err = TaskError::ActorCreationFailed {
        actor: a.actor_id,
        message: "boom".into(),
    };
    let (_, after) = t.worker_lost(a.actor_id, err);
    assert_eq!(after, AfterDeath::Dead(vec![]));
}

#[test]
fn owned_by_skips_detached_and_dead() {
    let mut t = ActorTable::new();
    t.register(task(9, 1), "C", &spec(1, None), ClientId(9))
        .unwrap();
    let detached = ActorCreate {
        detached: true,
        ..spec(2, None)
    };
    t.register(task(9, 2), "C", &detached, ClientId(9)).unwrap();
    t.register(task(9, 3), "C", &spec(3, None), ClientId(9))
        .unwrap();
    t.kill(ActorId([3; 16]), died());
    let owned: HashSet<ActorId> = t.owned_by(ClientId(9)).into_iter().collect();
    assert_eq!(owned, HashSet::from([ActorId([1; 16])]));
    let states: Vec<String> = t.status().into_iter().map(|s| s.state).collect();
    assert_eq!(states, vec!["pending", "pending", "dead"]);
}

/// Of the calls in flight when an actor's process dies, only the first `max_concurrency`
/// may have begun (a worker begins them in order): the others go back to their queues, in
/// order, for the restarted actor; and none had begun if the constructor had not finished.
#[test]
fn calls_in_flight_that_had_not_begun_wait_for_the_restart() {
    let mut t = ActorTable::new();
    let a = ActorCreate {
        max_restarts: 2,
        ..spec(1, None)
    };
    let id = a.actor_id;
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    t.hosted(id, 1);
    // Sent while the constructor runs; it dies: none of them began.
    for seq in 1..=3 {
        t.enqueue(id, ClientId(1), task(1, seq)).unwrap();
    }
    let (_, out) = t.take_ready(id, |_| true);
    assert_eq!(out.len(), 3);
    let (failed, after) = t.worker_lost(id, died());
    assert_eq!((failed, after), (vec![], AfterDeath::Restart));
    assert_eq!(
        t.take_requeued(id),
        vec![task(1, 3), task(1, 2), task(1, 1)]
    );
    // Once up (serial: one call at a time), the first in flight may have begun.
    t.hosted(id, 2);
    t.started(id, 101);
    t.enqueue(id, ClientId(1), task(1, 4)).unwrap();
    let (_, out) = t.take_ready(id, |_| true);
    assert_eq!(
        out,
        (1..=4).map(|s| task(1, s)).collect::<Vec<_>>(),
        "in order"
    );
    let (failed, after) = t.worker_lost(id, died());
    assert_eq!((failed, after), (vec![task(1, 1)], AfterDeath::Restart));
    t.hosted(id, 3);
    t.started(id, 102);
    let (_, out) = t.take_ready(id, |_| true);
    assert_eq!(out, (2..=4).map(|s| task(1, s)).collect::<Vec<_>>());
    // No restarts left: every call fails, the ones that had not begun with the queue.
    let (failed, after) = t.worker_lost(id, died());
    assert_eq!(failed, vec![task(1, 2)]);
    assert_eq!(after, AfterDeath::Dead(vec![task(1, 3), task(1, 4)]));
}

/// An actor with concurrency groups begins calls of different groups in no fixed order: when
/// its process dies, every call in flight may have begun, and fails.
#[test]
fn with_concurrency_groups_every_call_in_flight_may_have_begun() {
    let mut t = ActorTable::new();
    let a = ActorCreate {
        max_restarts: 1,
        concurrency_groups: vec![("io".into(), 2)],
        ..spec(1, None)
    };
    let id = a.actor_id;
    t.register(task(9, 1), "C", &a, ClientId(9)).unwrap();
    t.hosted(id, 1);
    t.started(id, 100);
    for seq in 1..=4 {
        t.enqueue(id, ClientId(1), task(1, seq)).unwrap();
    }
    let (_, out) = t.take_ready(id, |_| true);
    assert_eq!(out.len(), 4);
    let (failed, after) = t.worker_lost(id, died());
    assert_eq!(failed, (1..=4).map(|s| task(1, s)).collect::<Vec<_>>());
    assert_eq!(after, AfterDeath::Restart);
    assert!(t.take_requeued(id).is_empty());
}
