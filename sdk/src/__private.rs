//! What the macros' expansions call. Not a public API: names and signatures may change.
//!
//! A leaf facade: everything here lives in the module that owns it and is only re-exported,
//! so that the expansions have one stable path (`::shoal::__private::*`). Nothing inside the
//! SDK imports from here.

pub use linkme;

pub use crate::actor::{
    Access, ActorClass, ActorMethods, BlockingCall, CallFuture, Guard, RawActor, ACTOR_CLASSES,
};
pub use crate::function::{
    encode_result, encode_return, err_where, mark_returned_error, yield_items, yield_items_async,
    Args, Classify, IsErr, NotErr, RemoteFunction, REMOTE_FUNCTIONS,
};
pub use crate::submit::{
    call_actor, call_actor_several, call_actor_stream, create_actor, create_actor_with, submit,
    submit_several, submit_stream, try_create_actor_with, ArgBuf, Returns,
};
pub use crate::worker::host::host_actor;
pub use crate::worker::{block_on, worker_ctor};
