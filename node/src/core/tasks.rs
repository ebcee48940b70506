//! The task table: tasks this node runs, waits to run, or sent to a peer, with what each is
//! still waiting for and how many retries it has left.

use shoal_protocol::{Arg, IdMap, ObjectId, TaskId, TaskKind, TaskSpec};

use super::Party;

/// One task.
#[derive(Debug)]
pub(crate) struct TaskEntry {
    pub(crate) spec: TaskSpec,
    /// `spec.return_id()`, hashed once.
    pub(crate) ret: ObjectId,
    /// `spec.more_return_ids()`: its other return objects (none for most tasks).
    pub(crate) more: Box<[ObjectId]>,
    /// A task with several returns whose worker reported them: its first return, waiting
    /// for the others to be in place (they are all ready before it is).
    pub(crate) first: Option<Box<FirstReturn>>,
    /// A streaming generator's items, as they stand here.
    pub(crate) stream: Option<Box<super::streams::StreamState>>,
    /// Who submitted it (a local process, or a peer that sent it here).
    pub(crate) owner: Party,
    /// Arguments not yet ready.
    pub(crate) missing: usize,
    pub(crate) retries_left: u32,
    /// Shared-memory arguments kept in memory for the worker that reads them.
    pub(crate) store_pins: Vec<ObjectId>,
    /// How many times it was spilled from peer to peer before arriving here.
    pub(crate) hops: u32,
    /// Looks at the queue (spill passes) that found it still waiting here.
    pub(crate) passes_waited: u32,
    /// An actor call sent to its actor's worker: out of the actor's queue for good.
    pub(crate) sent: bool,
    /// Its span (`task = %id`): entered while the core works on it.
    pub(crate) span: tracing::Span,
    /// When it arrived at this node (the start of its dispatch and call latencies).
    pub(crate) arrived: std::time::Instant,
    /// When its arguments were all there, if they are.
    pub(crate) ready: Option<std::time::Instant>,
    /// When it was last handed to a worker.
    pub(crate) started: Option<std::time::Instant>,
    /// The worker process it was last handed to.
    pub(crate) worker_pid: Option<u32>,
    /// The worker it was last handed to.
    pub(crate) worker: Option<super::sched::WorkerId>,
    /// Its end is recorded for the state API (it is told from there now).
    pub(crate) recorded: bool,
}

impl TaskEntry {
    /// A task of `spec` arrived at `now`, whose return object is `ret` (`spec.return_id()`,
    /// hashed once by the caller).
    pub(crate) fn new(
        now: std::time::Instant,
        spec: TaskSpec,
        ret: ObjectId,
        owner: Party,
        missing: usize,
        hops: u32,
    ) -> Self {
        let span = tracing::debug_span!("task", task = %spec.task_id, function = %spec.function);
        let more = if spec.num_returns > 1 {
            spec.more_return_ids().into_boxed_slice()
        } else {
            Box::default()
        };
        let stream = spec
            .stream
            .map(|s| Box::new(super::streams::StreamState::new(s.window)));
        Self {
            ret,
            more,
            first: None,
            stream,
            retries_left: spec.max_retries,
            spec,
            owner,
            missing,
            store_pins: Vec::new(),
            hops,
            passes_waited: 0,
            sent: false,
            span,
            arrived: now,
            ready: None,
            started: None,
            worker_pid: None,
            worker: None,
            recorded: false,
        }
    }

    /// Whether it is a call of an actor.
    pub(crate) fn is_call(&self) -> bool {
        matches!(self.spec.kind, TaskKind::ActorMethod { .. })
    }

    /// The objects it takes as arguments.
    pub(crate) fn arg_refs(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.spec.args.iter().filter_map(|a| match a {
            Arg::Ref(id) => Some(*id),
            Arg::Value(_) => None,
        })
    }
}

/// The first return of a task with several, as its worker reported it, kept until its
/// other returns are in the store.
#[derive(Debug)]
pub(crate) struct FirstReturn {
    /// The worker's connection.
    pub(crate) conn: super::ConnId,
    /// Its value.
    pub(crate) outcome: shoal_protocol::TaskOutcome,
    /// The refs inside it.
    pub(crate) nested: Vec<ObjectId>,
    /// Other returns whose files are still being put in place.
    pub(crate) sealing: u32,
}

/// Every task this node knows of.
pub(crate) type TaskTable = IdMap<TaskId, TaskEntry>;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_protocol::{
        Arg, ArgValue, ClientId, ExitInfo, Hello, ObjectValue, ResourceSet, Role, TaskError,
        TaskKind, TaskOutcome, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
    };

    use crate::core::harness::{
        attach_worker, drain, executed, from, node, peer_key, peer_node, replies, send, sigkill,
        spec,
    };
    use crate::core::{Input, Output, WorkerEnd};
    use shoal_protocol::ObjectId;

    #[test]
    fn invalid_options_fail_the_task_at_once_and_start_nothing() {
        let now = Instant::now();
        let mut core = node(now, 4.0, 1 << 20);
        let mut task = spec(1, Vec::new(), 0);
        task.resources = ResourceSet::cpus(1.5);
        let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
        assert!(!out.iter().any(|o| matches!(o, Output::SpawnWorker { .. })));
        let failed = replies(&out).into_iter().any(|m| {
            matches!(m, ToClient::Object { id, value: ObjectValue::Error(TaskError::InvalidOptions { reason }) }
                if id == task.return_id() && reason.contains("CPU=1.5"))
        });
        assert!(failed, "{out:?}");
        // An empty actor name.
        let mut create = spec(2, Vec::new(), 0);
        create.resources = ResourceSet::new();
        create.kind = TaskKind::CreateActor(shoal_protocol::ActorCreate {
            actor_id: shoal_protocol::ActorId([2; 16]),
            token: shoal_protocol::ActorToken([2; 16]),
            name: Some(String::new()),
            get_if_exists: false,
            max_restarts: 0,
            max_concurrency: 1,
            detached: false,
            concurrency_groups: Vec::new(),
            max_task_retries: 0,
        });
        let out = send(&mut core, now, ToNode::Submit(Box::new(create.clone())));
        let failed = replies(&out).into_iter().any(|m| {
            matches!(m, ToClient::Object { id, value: ObjectValue::Error(TaskError::InvalidOptions { .. }) }
                if id == create.return_id())
        });
        assert!(failed, "{out:?}");
        // A concurrency group that runs nothing, or given twice.
        for (seq, groups) in [
            (4, vec![("io".to_string(), 0)]),
            (5, vec![("io".to_string(), 1), ("io".to_string(), 2)]),
            (6, vec![(String::new(), 1)]),
        ] {
            let mut create = spec(seq, Vec::new(), 0);
            create.resources = ResourceSet::new();
            create.kind = TaskKind::CreateActor(shoal_protocol::ActorCreate {
                actor_id: shoal_protocol::ActorId([seq as u8; 16]),
                token: shoal_protocol::ActorToken([seq as u8; 16]),
                name: None,
                get_if_exists: false,
                max_restarts: 0,
                max_concurrency: 1,
                detached: false,
                concurrency_groups: groups,
                max_task_retries: 0,
            });
            let out = send(&mut core, now, ToNode::Submit(Box::new(create.clone())));
            let failed = replies(&out).into_iter().any(|m| {
                matches!(m, ToClient::Object { id, value: ObjectValue::Error(TaskError::InvalidOptions { reason }) }
                    if id == create.return_id() && reason.contains("concurrency group"))
            });
            assert!(failed, "{out:?}");
        }
        // Whole CPUs are fine.
        let mut two = spec(3, Vec::new(), 0);
        two.resources = ResourceSet::cpus(2.0);
        let out = send(&mut core, now, ToNode::Submit(Box::new(two)));
        assert!(
            out.iter().any(|o| matches!(o, Output::SpawnWorker { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn an_actor_that_exits_itself_fails_its_calls_and_is_not_restarted() {
        let now = Instant::now();
        let mut core = node(now, 4.0, 1 << 20);
        let actor = shoal_protocol::ActorId([9; 16]);
        let token = shoal_protocol::ActorToken([9; 16]);
        let mut create = spec(1, Vec::new(), 0);
        create.resources = ResourceSet::new();
        create.kind = TaskKind::CreateActor(shoal_protocol::ActorCreate {
            actor_id: actor,
            token,
            name: None,
            get_if_exists: false,
            max_restarts: 5,
            max_concurrency: 1,
            detached: false,
            concurrency_groups: Vec::new(),
            max_task_retries: 0,
        });
        let out = send(&mut core, now, ToNode::Submit(Box::new(create)));
        let (worker, _) = attach_worker(&mut core, now, &out, 10);
        let started = ToNode::ActorStarted {
            actor,
            result: Ok(()),
        };
        from(&mut core, now, 10, started);
        let call = |seq| {
            let mut c = spec(seq, Vec::new(), 0);
            c.resources = ResourceSet::new();
            c.kind = TaskKind::ActorMethod { actor, token };
            c
        };
        let (running, queued) = (call(2), call(3));
        send(&mut core, now, ToNode::Submit(Box::new(running.clone())));
        send(&mut core, now, ToNode::Submit(Box::new(queued.clone())));
        // A task's worker cannot end an actor it does not host.
        let out = send(&mut core, now, ToNode::ExitActor);
        assert!(out.is_empty(), "{out:?}");
        let out = from(&mut core, now, 10, ToNode::ExitActor);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::KillWorker { worker: w } if *w == worker)),
            "{out:?}"
        );
        let killed = |id| {
            replies(&out).into_iter().any(|m| {
                matches!(m, ToClient::Object { id: i, value: ObjectValue::Error(TaskError::ActorKilled { reason, .. }) }
                    if i == id && reason.contains("exit_actor"))
            })
        };
        assert!(killed(running.return_id()), "{out:?}");
        assert!(killed(queued.return_id()), "{out:?}");
        // Its process ending is no crash to restart it after.
        sigkill(&mut core, now, worker, 110);
        let out = drain(&mut core);
        assert!(
            !out.iter().any(|o| matches!(o, Output::SpawnWorker { .. })),
            "{out:?}"
        );
        let later = call(4);
        let out = send(&mut core, now, ToNode::Submit(Box::new(later.clone())));
        assert!(
            replies(&out).into_iter().any(|m| matches!(m, ToClient::Object { id, value: ObjectValue::Error(TaskError::ActorKilled { .. }) } if id == later.return_id())),
            "{out:?}"
        );
    }

    /// A get-or-create of the actor named `name` (id `seq`), not detached.
    fn get_or_create(seq: u64, name: &str) -> shoal_protocol::TaskSpec {
        let mut create = spec(seq, Vec::new(), 0);
        create.resources = ResourceSet::new();
        create.kind = TaskKind::CreateActor(shoal_protocol::ActorCreate {
            actor_id: shoal_protocol::ActorId([seq as u8; 16]),
            token: shoal_protocol::ActorToken([seq as u8; 16]),
            name: Some(name.into()),
            get_if_exists: true,
            max_restarts: 0,
            max_concurrency: 1,
            detached: false,
            concurrency_groups: Vec::new(),
            max_task_retries: 0,
        });
        create
    }

    /// A non-detached actor `seq` of the driver named `name`, started by worker `conn`.
    fn started_actor(
        core: &mut crate::core::NodeCore,
        now: Instant,
        seq: u64,
        name: &str,
        conn: u64,
    ) -> (
        shoal_protocol::ActorId,
        ObjectId,
        crate::core::sched::WorkerId,
    ) {
        let actor = shoal_protocol::ActorId([seq as u8; 16]);
        let create = get_or_create(seq, name);
        let handle = create.return_id();
        let out = send(core, now, ToNode::Submit(Box::new(create)));
        let (worker, _) = attach_worker(core, now, &out, conn);
        let started = ToNode::ActorStarted {
            actor,
            result: Ok(()),
        };
        from(core, now, conn, started);
        (actor, handle, worker)
    }

    fn lookup(core: &mut crate::core::NodeCore, now: Instant, conn: u64, name: &str) -> ToClient {
        let ask = ToNode::LookupActor {
            request: 1,
            name: name.into(),
        };
        let out = from(core, now, conn, ask);
        crate::core::harness::to(&out, conn)
            .pop()
            .expect("an answer")
    }

    fn killed(out: &[Output], worker: crate::core::sched::WorkerId) -> bool {
        out.iter()
            .any(|o| matches!(o, Output::KillWorker { worker: w } if *w == worker))
    }

    #[test]
    fn an_actor_ends_when_its_last_handle_anywhere_is_dropped() {
        let now = Instant::now();
        let mut core = node(now, 4.0, 1 << 20);
        let (actor, handle, worker) = started_actor(&mut core, now, 9, "svc", 10);
        // A task carries a copy of the handle (its ref is inside an argument).
        let mut task = spec(2, vec![Arg::Value(b"h".to_vec())], 0);
        task.nested = vec![handle];
        let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
        let (_, out) = attach_worker(&mut core, now, &out, 11);
        assert_eq!(executed(&out, 11).len(), 1);
        // The task's process reads it: it holds the actor too.
        from(&mut core, now, 11, ToNode::Hold { ids: vec![handle] });
        // A second program finds it by name: counted, as a holder of the handle object.
        core.handle(
            now,
            Input::Attached {
                conn: 20,
                hello: Hello {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    role: Role::Driver,
                    pid: 20,
                    client: ClientId(20),
                    binary: None,
                },
            },
        );
        drain(&mut core);
        match lookup(&mut core, now, 20, "svc") {
            ToClient::ActorFound {
                actor: Some(a),
                held,
                ..
            } => {
                assert_eq!(a.actor_id, actor);
                assert_eq!(held, Some(handle));
            }
            other => panic!("{other:?}"),
        }
        // The creator drops its handle, the finder its own, the task ends: the actor lives
        // on while the task's process holds a copy.
        let release = || ToNode::Release { ids: vec![handle] };
        assert!(!killed(&send(&mut core, now, release()), worker));
        assert!(!killed(&from(&mut core, now, 20, release()), worker));
        let done = ToNode::Done {
            task_id: task.task_id,
            outcome: TaskOutcome::Ok(ObjectValue::Inline(b"ok".to_vec())),
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        };
        assert!(!killed(&from(&mut core, now, 11, done), worker));
        // The last copy goes: the actor ends, and its name is free.
        assert!(killed(&from(&mut core, now, 11, release()), worker));
        assert!(matches!(
            lookup(&mut core, now, 20, "svc"),
            ToClient::ActorFound {
                actor: None,
                held: None,
                ..
            }
        ));
    }

    #[test]
    fn a_handle_a_get_or_create_found_is_counted_with_the_others() {
        let now = Instant::now();
        let mut core = node(now, 4.0, 1 << 20);
        let (_, handle, worker) = started_actor(&mut core, now, 9, "svc", 10);
        // A get-or-create finds it: the handle it returns holds the actor's handle object.
        let again = get_or_create(3, "svc");
        send(&mut core, now, ToNode::Submit(Box::new(again.clone())));
        // The creator drops its handle: the one the get-or-create gave keeps the actor.
        let out = send(&mut core, now, ToNode::Release { ids: vec![handle] });
        assert!(!killed(&out, worker), "{out:?}");
        // It goes too: the actor ends.
        let ids = vec![again.return_id()];
        let out = send(&mut core, now, ToNode::Release { ids });
        assert!(killed(&out, worker), "{out:?}");
    }

    #[test]
    fn a_peer_is_lent_a_counted_handle_only_with_the_actors_secret() {
        use shoal_protocol::mesh::PeerMsg;
        let now = Instant::now();
        let mut core = peer_node(now, 4.0, 1 << 20, peer_key(1));
        let (actor, handle, worker) = started_actor(&mut core, now, 9, "svc", 10);
        let asker = peer_key(2);
        let ask = |core: &mut crate::core::NodeCore, request, token| {
            let msgs = vec![PeerMsg::LendHandle {
                request,
                actor,
                token: shoal_protocol::ActorToken(token),
            }];
            core.handle(now, Input::FromPeer { peer: asker, msgs });
            drain(core)
                .into_iter()
                .find_map(|o| match o {
                    Output::ToPeer {
                        peer,
                        msg: PeerMsg::HandleLent { request: r, held },
                    } if peer == asker && r == request => Some(held),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no answer to request {request}"))
        };
        // A wrong secret gets nothing (and holds nothing: the actor can still end).
        assert_eq!(ask(&mut core, 1, [0; 16]), None);
        // The right one gets the handle object, which the peer then holds.
        assert_eq!(ask(&mut core, 2, [9; 16]), Some(handle));
        let out = send(&mut core, now, ToNode::Release { ids: vec![handle] });
        assert!(!killed(&out, worker), "{out:?}");
        // The peer gives it back: the actor ends.
        let msgs = vec![PeerMsg::Release { ids: vec![handle] }];
        core.handle(now, Input::FromPeer { peer: asker, msgs });
        assert!(killed(&drain(&mut core), worker));
    }

    #[test]
    fn a_result_another_copy_of_which_is_being_written_runs_again_instead_of_failing() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let task = spec(1, Vec::new(), 0);
        let ret = task.return_id();
        let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
        let (_, out) = attach_worker(&mut core, now, &out, 10);
        assert_eq!(executed(&out, 10).len(), 1);
        // Another copy of its result is being written here (a pull of an earlier run's).
        let create = ToNode::Create {
            request: 1,
            id: ret,
            size: 100,
        };
        send(&mut core, now, create);
        // So its own could not be stored: it runs again, and its owner sees no failure.
        let message = format!("object {ret} exists already");
        let done = ToNode::Done {
            task_id: task.task_id,
            outcome: TaskOutcome::Err(TaskError::ResultStore { message }),
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        };
        let out = from(&mut core, now, 10, done);
        assert!(
            !replies(&out)
                .iter()
                .any(|m| matches!(m, ToClient::Object { id, .. } if *id == ret)),
            "{out:?}"
        );
        assert_eq!(executed(&out, 10).len(), 1, "{out:?}");
    }

    #[test]
    fn a_freed_object_fails_its_reads_and_the_tasks_that_wait_for_it() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let first = spec(1, Vec::new(), 0);
        let ret = first.return_id();
        let out = send(&mut core, now, ToNode::Submit(Box::new(first.clone())));
        let second = spec(2, vec![Arg::Ref(ret)], 0);
        send(&mut core, now, ToNode::Submit(Box::new(second.clone())));
        let (_, _) = attach_worker(&mut core, now, &out, 10);
        let freed = |id| ObjectValue::Error(TaskError::ObjectFreed { id });
        // Only a holder frees: the worker holds nothing.
        let out = from(&mut core, now, 10, ToNode::Free { ids: vec![ret] });
        assert!(replies(&out).is_empty(), "{out:?}");
        // Freed while it is being made: its waiter and the task that takes it fail.
        let out = send(&mut core, now, ToNode::Free { ids: vec![ret] });
        let got: Vec<_> = replies(&out)
            .into_iter()
            .filter_map(|m| match m {
                ToClient::Object { id, value } => Some((id, value)),
                _ => None,
            })
            .collect();
        assert!(got.contains(&(ret, freed(ret))), "{got:?}");
        assert!(got.contains(&(second.return_id(), freed(ret))), "{got:?}");
        // A value this node has: gone, and a later read fails.
        let value = b"value".to_vec();
        let id = ObjectId::for_content(&value);
        let put = ToNode::Put {
            id,
            value,
            nested: Vec::new(),
        };
        send(&mut core, now, put);
        send(&mut core, now, ToNode::Free { ids: vec![id] });
        let out = send(&mut core, now, ToNode::Get { ids: vec![id] });
        assert_eq!(
            replies(&out),
            vec![ToClient::Object {
                id,
                value: freed(id)
            }]
        );
        // The refs live on until released.
        assert!(core.objects.contains(&id));
        send(&mut core, now, ToNode::Release { ids: vec![id] });
        assert!(!core.objects.contains(&id));
    }

    #[test]
    fn a_task_waits_for_its_argument_then_runs_with_its_value() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let first = spec(1, vec![Arg::Value(b"x".to_vec())], 0);
        let ret = first.return_id();
        let out = send(&mut core, now, ToNode::Submit(Box::new(first.clone())));
        let second = spec(2, vec![Arg::Ref(ret)], 0);
        send(&mut core, now, ToNode::Submit(Box::new(second.clone())));
        let (_, out) = attach_worker(&mut core, now, &out, 10);
        assert_eq!(
            executed(&out, 10),
            vec![(first.task_id, vec![ArgValue::Inline(b"x".to_vec())])],
            "only the first runs"
        );
        let value = ObjectValue::Inline(b"one".to_vec());
        let done = ToNode::Done {
            task_id: first.task_id,
            outcome: TaskOutcome::Ok(value.clone()),
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        };
        let out = from(&mut core, now, 10, done);
        assert_eq!(
            replies(&out),
            vec![ToClient::Object { id: ret, value }],
            "its owner gets the value"
        );
        assert_eq!(
            executed(&out, 10),
            vec![(second.task_id, vec![ArgValue::Inline(b"one".to_vec())])],
            "the second runs with it"
        );
    }

    /// The metrics count what happened: tasks submitted, dispatched (the wait in the
    /// histogram), ended by function and outcome, retried; and the tasks by state.
    #[test]
    fn the_metrics_count_tasks_submitted_dispatched_ended_and_retried() {
        let t0 = Instant::now();
        let mut core = node(t0, 1.0, 1 << 20);
        let first = spec(1, Vec::new(), 1);
        let out = send(&mut core, t0, ToNode::Submit(Box::new(first.clone())));
        let second = spec(2, vec![Arg::Ref(first.return_id())], 0);
        send(&mut core, t0, ToNode::Submit(Box::new(second.clone())));
        let m = core.metrics();
        assert_eq!(m.counters.tasks_submitted, 2);
        let mut tasks = m.tasks.clone();
        tasks.sort();
        assert_eq!(
            tasks,
            vec![
                ("queued", "f".to_string(), 1),
                ("waiting_args", "f".to_string(), 1)
            ]
        );
        // The worker connects 3 ms later: the first task waited that long for it.
        let t1 = t0 + std::time::Duration::from_millis(3);
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Worker {
                worker_id: out
                    .iter()
                    .find_map(|o| match o {
                        Output::SpawnWorker { worker, .. } => Some(*worker),
                        _ => None,
                    })
                    .unwrap(),
            },
            pid: 110,
            client: ClientId(110),
            binary: None,
        };
        core.handle(t1, Input::Attached { conn: 10, hello });
        drain(&mut core);
        let m = core.metrics();
        assert_eq!(m.counters.dispatch_seconds.count, 1);
        assert!((m.counters.dispatch_seconds.sum - 0.003).abs() < 1e-9);
        assert!(
            m.tasks.contains(&("running", "f".to_string(), 1)),
            "{:?}",
            m.tasks
        );
        let done = |task_id, outcome| ToNode::Done {
            task_id,
            outcome,
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        };
        let ok = TaskOutcome::Ok(ObjectValue::Inline(b"1".to_vec()));
        from(&mut core, t1, 10, done(first.task_id, ok));
        let failed = TaskOutcome::Err(TaskError::Panicked {
            message: "no".into(),
            origin: None,
        });
        from(&mut core, t1, 10, done(second.task_id, failed));
        let m = core.metrics();
        let ended: Vec<_> = m
            .counters
            .tasks_ended
            .iter()
            .map(|(f, e)| (f.to_string(), *e))
            .collect();
        assert_eq!(
            ended,
            vec![(
                "f".to_string(),
                crate::core::metrics::Ended { ok: 1, failed: 1 }
            )]
        );
        assert_eq!(m.counters.dispatch_seconds.count, 2);
        assert!(m.tasks.is_empty(), "{:?}", m.tasks);
        assert_eq!(m.counters.tasks_retried, 0);
        assert_eq!(m.counters.workers_started, 1);
    }

    #[test]
    fn a_task_whose_worker_dies_runs_again_within_its_budget_then_fails() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let task = spec(1, Vec::new(), 1);
        let ret = task.return_id();
        let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
        let mut conn = 10;
        let (mut worker, mut out) = attach_worker(&mut core, now, &out, conn);
        for run in 0..2 {
            assert_eq!(executed(&out, conn).len(), 1, "run {run}");
            let exit = ExitInfo {
                code: None,
                signal: Some(9),
            };
            core.handle(now, Input::Detached { conn });
            core.handle(
                now,
                Input::WorkerExited {
                    worker,
                    end: WorkerEnd::Exited {
                        pid: 100 + conn as u32,
                        exit,
                    },
                },
            );
            out = drain(&mut core);
            if run == 0 {
                assert!(replies(&out).is_empty(), "one retry left: {out:?}");
                conn += 1;
                (worker, out) = attach_worker(&mut core, now, &out, conn);
            }
        }
        assert!(
            matches!(
                &replies(&out)[..],
                [ToClient::Object {
                    id,
                    value: ObjectValue::Error(TaskError::WorkerDied { .. })
                }] if *id == ret
            ),
            "{out:?}"
        );
        assert_eq!(core.census().tasks, 0);
        // Each dead worker was replaced (the pool keeps its size): three started.
        let m = core.metrics().counters;
        assert_eq!(
            (m.tasks_retried, m.workers_died, m.workers_started),
            (1, 2, 3)
        );
    }

    #[test]
    fn a_task_killed_for_memory_runs_again_within_its_budget_then_fails_with_out_of_memory() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let task = spec(1, Vec::new(), 1);
        let ret = task.return_id();
        let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
        // A local program's binary: its workers are not sandboxed.
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::SpawnWorker { shipped: false, .. })),
            "{out:?}"
        );
        let mut conn = 10;
        let (mut worker, mut out) = attach_worker(&mut core, now, &out, conn);
        for run in 0..2 {
            assert_eq!(executed(&out, conn).len(), 1, "run {run}");
            core.handle(now, Input::Detached { conn });
            let end = WorkerEnd::OutOfMemory {
                pid: 100 + conn as u32,
                limit: 64 << 20,
                used: 65 << 20,
            };
            core.handle(now, Input::WorkerExited { worker, end });
            out = drain(&mut core);
            if run == 0 {
                assert!(replies(&out).is_empty(), "one retry left: {out:?}");
                conn += 1;
                (worker, out) = attach_worker(&mut core, now, &out, conn);
            }
        }
        let oom = TaskError::OutOfMemory {
            limit: 64 << 20,
            used: 65 << 20,
        };
        assert_eq!(
            replies(&out),
            vec![ToClient::Object {
                id: ret,
                value: ObjectValue::Error(oom)
            }]
        );
        assert_eq!(core.census().tasks, 0);
    }
}
