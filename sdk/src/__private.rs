//! What the macros' expansions call. Not a public API: names and signatures may change.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::{codec, ArgValue, EncodeError, ObjectId, TaskError, TaskId, TaskSpec, ToNode};

pub use linkme;

use crate::context;
use crate::object_ref::{ObjectRef, RawRef};
use crate::{GetError, TaskOptions};

/// One argument of a call, before it is sent.
#[derive(Debug)]
pub enum ArgBuf {
    /// An encoded value (or why it could not be encoded).
    Value(Result<Vec<u8>, EncodeError>),
    /// A reference whose value the task receives.
    Ref(RawRef),
}

/// A function callable by name in a worker.
#[derive(Debug)]
pub struct RemoteFunction {
    /// `module_path!()::name`.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the result.
    pub invoke: fn(Args) -> Result<Vec<u8>, TaskError>,
}

/// Every `#[shoal::remote]` function linked into this binary.
#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// The arguments of a task, as a worker received them.
#[derive(Debug)]
pub struct Args {
    values: Vec<Option<ArgValue>>,
}

impl Args {
    pub(crate) fn new(values: Vec<ArgValue>) -> Self {
        Self {
            values: values.into_iter().map(Some).collect(),
        }
    }

    /// Decodes argument `index` as a `T`.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, TaskError> {
        let bad = |message: String| TaskError::ArgDecode { index, message };
        let value = self
            .values
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                bad(format!(
                    "missing (the task has {} arguments)",
                    self.values.len()
                ))
            })?;
        match value {
            ArgValue::Inline(bytes) => {
                codec::decode(&bytes, usize::MAX).map_err(|e| bad(e.to_string()))
            }
            ArgValue::Shared(id, obj) => {
                let ctx = context::get();
                let map = crate::shm::map(ctx.store_dir(), &id, obj.size)
                    .map_err(|e| bad(e.to_string()))?;
                codec::decode(&map, usize::MAX).map_err(|e| bad(e.to_string()))
            }
        }
    }
}

/// Encodes a function's result.
pub fn encode_result<T: Serialize>(value: &T) -> Result<Vec<u8>, TaskError> {
    codec::encode(value).map_err(|e| TaskError::ResultStore {
        message: e.to_string(),
    })
}

/// Runs an async function's future to completion on the worker's task runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    crate::worker::block_on(f)
}

/// Enters worker mode if this process was started as a worker. Runs before `main`.
pub extern "C" fn worker_ctor() {
    crate::worker::enter_if_worker();
}

/// Submits a call of `name` and returns the reference to its result.
pub fn submit<R>(name: &'static str, options: &TaskOptions, args: Vec<ArgBuf>) -> ObjectRef<R> {
    let ctx = context::get();
    let task_id = TaskId::new(ctx.client, ctx.next_task_seq());
    let ret = ObjectId::for_return(task_id, 0);
    let mut wire = Vec::with_capacity(args.len());
    // Handles to the arguments stay alive until the submit is queued.
    let mut keep = Vec::new();
    for (index, arg) in args.into_iter().enumerate() {
        match arg {
            ArgBuf::Value(Ok(bytes)) if bytes.len() <= ctx.inline_threshold => {
                wire.push(shoal_protocol::Arg::Value(bytes))
            }
            ArgBuf::Value(Ok(bytes)) => {
                // Too large to travel inline: stored first, passed by reference.
                let raw = crate::put_encoded(ctx, bytes).map_err(|e| e.to_string());
                match raw {
                    Ok(raw) => {
                        wire.push(shoal_protocol::Arg::Ref(raw.id));
                        keep.push(raw);
                    }
                    Err(message) => return failed(ctx, ret, index, message),
                }
            }
            ArgBuf::Value(Err(e)) => return failed(ctx, ret, index, e.to_string()),
            ArgBuf::Ref(raw) => {
                wire.push(shoal_protocol::Arg::Ref(raw.id));
                keep.push(raw);
            }
        }
    }
    ctx.add_owned_result(ret);
    ctx.push(ToNode::Submit(TaskSpec {
        task_id,
        function: name.to_string(),
        binary: ctx.binary,
        args: wire,
        resources: options.resources.clone(),
        max_retries: options.max_retries,
        owner: ctx.client,
    }));
    drop(keep);
    ObjectRef::from_raw(RawRef::counted(ret, ctx.client))
}

/// A reference to a call that failed before it was sent (an argument could not be encoded or
/// stored): its `get` returns the error.
fn failed<R>(
    ctx: &crate::context::Context,
    ret: ObjectId,
    index: usize,
    message: String,
) -> ObjectRef<R> {
    ctx.add_failed(ret, GetError::Task(TaskError::ArgDecode { index, message }));
    ObjectRef::from_raw(RawRef::counted(ret, ctx.client))
}
