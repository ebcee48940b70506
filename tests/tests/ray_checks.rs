//! The checks Ray makes of a program's calls, made by Shoal with typed errors (issue 14
//! item 7), on an embedded node: `wait` with a ref twice or asking for more than it is
//! given, `put` of an `ObjectRef`, a fractional quantity above one, an empty actor name.

use std::time::Duration;

use shoal::{ActorError, ActorOptions, GetError, PutError, TaskError, TaskOptions, WaitError};

#[shoal::remote]
fn one() -> u64 {
    1
}

#[derive(Default)]
pub struct Named;

#[shoal::actor]
impl Named {
    pub fn new() -> Self {
        Named
    }

    pub fn ping(&self) -> u64 {
        7
    }
}

/// Reads a ref written as JSON, in another process, and gets its value.
#[shoal::remote]
fn read_json_ref(json: String) -> Vec<u8> {
    let r: shoal::ObjectRef<Vec<u8>> = serde_json::from_str(&json).unwrap();
    r.get_blocking().unwrap()
}

#[test]
fn a_ref_written_by_another_serializer_keeps_its_object_while_its_writer_lives() {
    shoal::init().unwrap();
    // A value large enough for the store, and a small one.
    for len in [1 << 20, 16] {
        let value = vec![3u8; len];
        let r = shoal::put(&value).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        // No handle is left here, only the JSON text: the object is pinned, not freed.
        drop(r);
        assert_eq!(
            read_json_ref.remote(json.clone()).get_blocking(),
            Ok(value.clone())
        );
        let back: shoal::ObjectRef<Vec<u8>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get_blocking(), Ok(value));
    }
}

#[test]
fn wait_refuses_a_ref_given_twice_and_more_than_it_is_given() {
    shoal::init().unwrap();
    let a = one.remote();
    let b = one.remote();
    let refs = vec![a.clone(), b.clone(), a.clone()];
    assert_eq!(
        shoal::wait_blocking(&refs, 1, None).map(|_| ()),
        Err(WaitError::Duplicate(a.id()))
    );
    let two = vec![a.clone(), b.clone()];
    assert_eq!(
        shoal::wait_blocking(&two, 3, Some(Duration::ZERO)).map(|_| ()),
        Err(WaitError::TooMany {
            num_ready: 3,
            refs: 2
        })
    );
    let (ready, pending) = shoal::wait_blocking(&two, 2, None).unwrap();
    assert_eq!((ready.len(), pending.len()), (2, 0));
}

#[test]
fn put_of_an_object_ref_is_refused_but_a_value_holding_refs_is_not() {
    shoal::init().unwrap();
    let r = shoal::put(&5u64).unwrap();
    assert_eq!(shoal::put(&r).map(|_| ()), Err(PutError::ObjectRef));
    let held = shoal::put(&vec![r.clone()]).unwrap();
    let back = held.get_blocking().unwrap();
    assert_eq!(back[0].get_blocking().unwrap(), 5);
}

#[test]
fn a_fractional_quantity_above_one_is_refused() {
    shoal::init().unwrap();
    let refused = one
        .options(TaskOptions::new().num_cpus(1.5))
        .remote()
        .get_blocking();
    match refused {
        Err(GetError::Task(TaskError::InvalidOptions { reason })) => {
            assert!(reason.contains("CPU=1.5"), "{reason}")
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
    // A part of one CPU, and whole CPUs, are fine.
    for cpus in [0.5, 1.0] {
        let ok = one.options(TaskOptions::new().num_cpus(cpus)).remote();
        assert_eq!(ok.get_blocking().unwrap(), 1);
    }
}

#[test]
fn an_empty_actor_name_is_refused() {
    shoal::init().unwrap();
    match Named::options(ActorOptions::new().name("")).try_remote() {
        Err(ActorError::Create(GetError::Task(TaskError::InvalidOptions { reason }))) => {
            assert!(reason.contains("name"), "{reason}")
        }
        other => panic!("expected InvalidOptions, got {:?}", other.map(|_| ())),
    }
    let named = Named::options(ActorOptions::new().name("a name")).remote();
    assert_eq!(named.ping().get_blocking().unwrap(), 7);
}

#[shoal::remote]
fn context() -> (
    Option<shoal::TaskId>,
    Option<shoal::ActorId>,
    u32,
    shoal::NodeId,
    shoal::ResourceSet,
) {
    let here = shoal::runtime_context();
    (
        here.task_id,
        here.actor_id,
        here.pid,
        here.node_id,
        here.resources,
    )
}

#[derive(Default)]
pub struct WhoAmI;

#[shoal::actor]
impl WhoAmI {
    pub fn new() -> Self {
        WhoAmI
    }

    pub fn who(
        &self,
    ) -> (
        Option<shoal::TaskId>,
        Option<shoal::ActorId>,
        shoal::ResourceSet,
    ) {
        let here = shoal::runtime_context();
        (here.task_id, here.actor_id, here.resources)
    }
}

/// Ray's `get_runtime_context()`: a task knows its task id (whose result is the ref its
/// submitter holds) and what it holds, an actor call its actor and what the actor holds, and
/// a driver none of these.
#[test]
fn the_runtime_context_names_the_task_and_the_actor() {
    let shoal = shoal::init().unwrap();
    let here = shoal::runtime_context();
    assert_eq!((here.task_id, here.actor_id), (None, None));
    assert_eq!(here.resources, shoal::ResourceSet::new());
    assert_eq!(here.node_id, shoal.node_id());
    let r = context
        .options(shoal::TaskOptions::new().num_cpus(0.5))
        .remote();
    let (task, actor, pid, node, resources) = r.get_blocking().unwrap();
    assert_eq!(resources, shoal::ResourceSet::cpus(0.5));
    // The default demand, which the node does not spell out.
    let (_, _, _, _, resources) = context.remote().get_blocking().unwrap();
    assert_eq!(resources, shoal::ResourceSet::cpus(1.0));
    let task = task.expect("a task id in a task");
    assert_eq!(shoal::ObjectId::for_return(task, 0), r.id());
    assert_eq!(actor, None);
    assert_ne!(pid, std::process::id(), "it ran in a worker");
    assert_eq!(node, shoal.node_id());
    let a = WhoAmI::options(ActorOptions::new().num_cpus(1.0)).remote();
    let call = a.who();
    let (task, actor, resources) = call.get_blocking().unwrap();
    assert_eq!(resources, shoal::ResourceSet::cpus(1.0));
    assert_eq!(shoal::ObjectId::for_return(task.unwrap(), 0), call.id());
    assert_eq!(actor, Some(shoal::ActorHandle::id(&a)));
}
