//! The `#[remote]` and `#[actor]` attributes of the Shoal SDK, re-exported as
//! `shoal::remote` and `shoal::actor`.
//!
//! `#[remote]` turns a free function into a *remote function*: a zero-sized value with the
//! function's name that can run the function here ([`call`](#the-expansion)) or submit it as a
//! task to the mesh (`remote`, `options(..).remote`), and an entry in the binary's registry so
//! that a worker process running the same binary can find and invoke it by name.
//!
//! # The expansion
//!
//! ```ignore
//! /// Adds.
//! #[shoal::remote]
//! pub fn add(a: i64, b: i64) -> i64 { a + b }
//! ```
//!
//! becomes (abbreviated: the real output spells `::core::...` and `::std::...` paths in full so
//! that it does not depend on what the caller has in scope, gives its own locals mixed-site
//! hygiene, and adds `#[allow(clippy::too_many_arguments)]` to the `remote` methods):
//!
//! ```ignore
//! /// Adds.
//! #[allow(non_camel_case_types)]
//! #[derive(Clone, Copy, Debug, Default)]
//! pub struct add;
//!
//! #[allow(non_camel_case_types)]
//! #[doc(hidden)]
//! #[derive(Clone, Debug)]
//! pub struct __shoal_remote_add { options: ::shoal::TaskOptions }
//!
//! impl add {
//!     pub const NAME: &str = concat!(module_path!(), "::", "add");
//!     /// Runs the function here, in this process (the original body).
//!     ///
//!     /// Adds.
//!     pub fn call(a: i64, b: i64) -> i64 { a + b }
//!     pub fn remote(
//!         &self,
//!         a: impl ::shoal::IntoArg<i64>,
//!         b: impl ::shoal::IntoArg<i64>,
//!     ) -> ::shoal::ObjectRef<i64> {
//!         ::shoal::__private::submit::<i64>(
//!             Self::NAME,
//!             &::shoal::TaskOptions::default(),
//!             vec![::shoal::IntoArg::<i64>::into_arg(a), ::shoal::IntoArg::<i64>::into_arg(b)],
//!         )
//!     }
//!     pub fn options(&self, options: ::shoal::TaskOptions) -> __shoal_remote_add {
//!         __shoal_remote_add { options }
//!     }
//! }
//!
//! impl __shoal_remote_add {
//!     pub fn remote(&self, a: .., b: ..) -> ::shoal::ObjectRef<i64> {
//!         ::shoal::__private::submit::<i64>(add::NAME, &self.options, vec![..])
//!     }
//! }
//!
//! const _: () = {
//!     fn __shoal_invoke(
//!         mut args: ::shoal::__private::Args,
//!     ) -> Result<Vec<u8>, ::shoal::TaskError> {
//!         let a: i64 = args.take(0)?;
//!         let b: i64 = args.take(1)?;
//!         ::shoal::__private::encode_result::<i64>(&add::call(a, b))
//!     }
//!
//!     #[::shoal::__private::linkme::distributed_slice(::shoal::__private::REMOTE_FUNCTIONS)]
//!     #[linkme(crate = ::shoal::__private::linkme)]
//!     static __SHOAL_REGISTER: ::shoal::__private::RemoteFunction =
//!         ::shoal::__private::RemoteFunction { name: add::NAME, invoke: __shoal_invoke, max_calls: 0 };
//!
//!     #[used]
//!     #[cfg_attr(
//!         any(target_os = "linux", target_os = "android", target_os = "freebsd"),
//!         unsafe(link_section = ".init_array")
//!     )]
//!     #[cfg_attr(target_vendor = "apple", unsafe(link_section = "__DATA,__mod_init_func"))]
//!     static __SHOAL_CTOR: extern "C" fn() = ::shoal::__private::worker_ctor;
//! };
//! ```
//!
//! Details:
//! - Everything generated has the function's visibility, so a private function yields private
//!   items (and no "private type in public interface" errors).
//! - The registered name is `module_path!()` + `"::"` + the function's name (without `r#`).
//! - Parameter types and the return type are copied verbatim; no return type means `()`.
//!   `submit::<R>` and `ObjectRef<R>` use the return type `R`.
//! - An `async fn` keeps `async` on `call`; the worker runs it with
//!   `::shoal::__private::block_on(add::call(..))`. `remote` itself is never `async`.
//! - Doc comments go onto the struct and onto `call`; other attributes go onto `call`, except
//!   `#[cfg(..)]`, which goes onto every generated item.
//! - Inside the body the name `add` is the struct, so a local recursive call is written
//!   `add::call(..)`, and `add.remote(..)` submits a subtask. For the same reason no parameter
//!   may be called `add` (it would be a pattern matching the unit struct): that is an error.
//! - A `_` parameter is accepted (the argument is still sent; `remote` gets a hidden name).
//! - `#[remote(streaming)]` takes the item type `T` from the return type (`impl Iterator<Item
//!   = T>` and `IntoIterator` with any other bounds, `Box<dyn Iterator<Item = T>>`, `Vec<T>`):
//!   `remote` returns `ObjectRefStream<T>` (built by `submit_stream`), and the shim hands the
//!   function's result to `yield_items::<T>`, which stores each item as its own object as it
//!   comes. The return type is exempt from the `impl Trait` rule; the item type is not.
//! - `#[remote(num_returns = n)]` with `n > 1` requires a return type that is a tuple of `n`
//!   elements `(T0, .., Tn)`: `remote` returns `(ObjectRef<T0>, .., ObjectRef<Tn>)` (built by
//!   `submit_several` and `Returns::take`), and the shim encodes the elements 1.. with
//!   `encode_return` before the first with `encode_result`, each its own object.
//! - The `__SHOAL_CTOR` constructor runs `worker_ctor` before `main` (and before libtest's
//!   `main` in test binaries), once per remote function (and actor) in the binary, so
//!   `worker_ctor` must be idempotent and cheap. Other targets get no constructor.
//! - Both the registry entry and the constructor live in the object code of the crate that
//!   defines the function: a library crate's remote functions are in a binary only if the
//!   binary links that crate (i.e. uses something from it).
//! - Errors for argument or result types that are not `Serialize`/`DeserializeOwned` (or not
//!   `IntoArg`) point at the offending type in the signature.
//!
//! Unsupported input is rejected with an error pointing at the offending tokens: methods
//! (`self`), generic functions, `impl Trait` and borrowed (`&T`) types in the signature,
//! parameters that are patterns rather than plain names, attributes on parameters, variadics,
//! `unsafe fn`, `extern` functions, and arguments to the attribute itself.
//!
//! # Actors
//!
//! `#[actor]` turns an inherent `impl` block of a non-generic type into an *actor class*: the
//! type can be created in a worker process of its own (`Type::remote(..)`, returning a
//! `shoal::ActorHandle<Type>`), and its `&self`/`&mut self` methods called through the handle,
//! each call returning a `shoal::ObjectRef` at once. The class is registered in the binary so
//! that a worker running the same binary can host it.
//!
//! ```ignore
//! pub struct Counter { n: i64 }
//!
//! #[shoal::actor]
//! impl Counter {
//!     pub fn new(start: i64) -> Self { Counter { n: start } }
//!     /// Adds.
//!     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
//!     pub async fn get(&self) -> i64 { self.n }
//!     fn helper() -> u8 { 1 }
//! }
//! ```
//!
//! becomes (abbreviated as above) the impl block unchanged, followed by:
//!
//! ```ignore
//! #[doc(hidden)]
//! #[derive(Clone, Debug)]
//! pub struct __ShoalActorCounter { raw: ::shoal::__private::RawActor }
//!
//! #[allow(dead_code)]
//! impl __ShoalActorCounter {
//!     /// Adds.
//!     pub fn incr(&self, by: impl ::shoal::IntoArg<i64>) -> ::shoal::ObjectRef<i64> {
//!         ::shoal::__private::call_actor::<i64>(&self.raw, "incr", vec![/* by */])
//!     }
//!     pub fn get(&self) -> ::shoal::ObjectRef<i64> {
//!         ::shoal::__private::call_actor::<i64>(&self.raw, "get", vec![])
//!     }
//! }
//!
//! impl ::shoal::__private::ActorMethods for __ShoalActorCounter {
//!     fn from_raw(raw: ::shoal::__private::RawActor) -> Self { Self { raw } }
//!     fn raw(&self) -> &::shoal::__private::RawActor { &self.raw }
//! }
//!
//! #[allow(dead_code)]
//! impl Counter {
//!     pub fn remote(start: impl ::shoal::IntoArg<i64>) -> ::shoal::ActorHandle<Counter> {
//!         ::shoal::__private::create_actor::<Counter>(&::shoal::ActorOptions::default(), vec![..])
//!     }
//!     pub fn options(options: ::shoal::ActorOptions) -> __ShoalActorCreateCounter {
//!         __ShoalActorCreateCounter { options }
//!     }
//! }
//!
//! #[doc(hidden)]
//! #[derive(Clone, Debug)]
//! pub struct __ShoalActorCreateCounter { options: ::shoal::ActorOptions }
//!
//! impl __ShoalActorCreateCounter {
//!     pub fn remote(&self, start: impl ::shoal::IntoArg<i64>) -> ::shoal::ActorHandle<Counter> {
//!         ::shoal::__private::create_actor_with::<Counter>(&self.options, vec![..])
//!     }
//!     pub fn try_remote(
//!         &self,
//!         start: impl ::shoal::IntoArg<i64>,
//!     ) -> Result<::shoal::ActorHandle<Counter>, ::shoal::ActorError> {
//!         ::shoal::__private::try_create_actor_with::<Counter>(&self.options, vec![..])
//!     }
//! }
//!
//! impl ::shoal::Actor for Counter {
//!     const CLASS: &'static str = concat!(module_path!(), "::", "Counter");
//!     const DEFAULT_MAX_CONCURRENCY: u32 = 1000; // 1 if no method is `async`
//!     type Methods = __ShoalActorCounter;
//!
//!     fn __construct(mut args: ::shoal::__private::Args) -> Result<Self, ::shoal::TaskError> {
//!         let start: i64 = args.take(0)?;
//!         Ok(<Counter>::new(start))
//!     }
//!
//!     fn __access(method: &str) -> Option<::shoal::__private::Access> {
//!         match method {
//!             "incr" => Some(::shoal::__private::Access::Exclusive),
//!             "get" => Some(::shoal::__private::Access::Shared),
//!             _ => None,
//!         }
//!     }
//!
//!     fn __call(
//!         guard: ::shoal::__private::Guard<Self>,
//!         method: &str,
//!         args: ::shoal::__private::Args,
//!     ) -> ::shoal::__private::CallFuture {
//!         match method {
//!             "incr" => Box::pin(async move {
//!                 let mut guard = guard;
//!                 let mut args = args;
//!                 let by: i64 = args.take(0)?;
//!                 let state = guard.exclusive();
//!                 ::shoal::__private::encode_result::<i64>(&<Counter>::incr(state, by))
//!             }),
//!             "get" => Box::pin(async move {
//!                 let guard = guard;
//!                 let result = <Counter>::get(guard.shared()).await;
//!                 ::shoal::__private::encode_result::<i64>(&result)
//!             }),
//!             _ => {
//!                 let method = String::from(method);
//!                 Box::pin(async move { Err(TaskError::NoSuchFunction { name: method }) })
//!             }
//!         }
//!     }
//! }
//!
//! const _: () = {
//!     #[::shoal::__private::linkme::distributed_slice(::shoal::__private::ACTOR_CLASSES)]
//!     #[linkme(crate = ::shoal::__private::linkme)]
//!     static __SHOAL_ACTOR: ::shoal::__private::ActorClass = ::shoal::__private::ActorClass {
//!         name: <Counter as ::shoal::Actor>::CLASS,
//!         host: ::shoal::__private::host_actor::<Counter>,
//!     };
//!     static __SHOAL_CTOR: extern "C" fn() = ::shoal::__private::worker_ctor; // as above
//! };
//! ```
//!
//! Details:
//! - The constructor is the associated function `new` (required, synchronous, no receiver,
//!   returning `Self` or the type's name). `remote`, `options` and the options struct's `remote`
//!   have the visibility of `new`; each handle method has the visibility and the doc comments
//!   of its method. The two hidden structs are `pub` (the methods struct is named by the
//!   public `Actor::Methods`); both live in the module of the impl block.
//! - Methods taking `&self` or `&mut self` (also spelled `self: &Self`, `self: &mut Self`) are
//!   remote, with `Shared` and `Exclusive` access respectively. Associated functions without a
//!   receiver, consts and types are left alone.
//! - A method's return type `R` (`()` if none; the output type of an `async fn`) gives
//!   `ObjectRef<R>`. `Self` in a parameter or return type is replaced by the actor's type,
//!   since the generated items live in other impl blocks.
//! - The class name is `module_path!()` + `"::"` + the last segment of the type's path
//!   (`impl crate::m::Counter` gives `__ShoalActorCounter` and `"..::Counter"`). Methods are
//!   called by name (without `r#`).
//! - `DEFAULT_MAX_CONCURRENCY` is 1, or 1000 (as in Ray) if any remote method is `async`.
//! - `#[cfg(..)]` on the impl block goes onto every generated item; `#[cfg(..)]` on a method
//!   goes onto its handle method and its `__access` and `__call` arms.
//! - The generated locals (`guard`, `args`, `method` above) have mixed-site hygiene, so the
//!   methods' parameters, whose names are kept, cannot clash with them. A `_` parameter gets
//!   a hidden name.
//!
//! Besides what `#[remote]` rejects (in the constructor and in the remote methods), `#[actor]`
//! rejects: anything but an inherent `impl` block, generic impl blocks and types, `where`
//! clauses on the block, a missing, `async` or `self`-taking `new`, a `new` that does not
//! return `Self`, methods taking `self` by value (or `Box<Self>`, ..), and functions named
//! like generated items (`remote`, `options`; `raw`, `from_raw` for methods).
#![deny(missing_docs, unreachable_pub)]

mod actor;

use proc_macro::TokenStream;
use proc_macro2::{Literal, Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemFn, Pat, PatType, PathArguments, ReturnType,
    Signature, Type,
};

/// Makes a free function a remote function of the Shoal mesh.
///
/// See the [crate documentation](crate) for the exact expansion. In short, for
/// `#[remote] fn add(a: i64, b: i64) -> i64`:
/// - `add::call(1, 2)` runs the function in this process;
/// - `add.remote(1, 2)` submits it as a task and returns a `shoal::ObjectRef<i64>` at once;
/// - `add.options(opts).remote(1, 2)` does the same with per-call `shoal::TaskOptions`;
/// - `add::NAME` is the name under which the function is registered in the binary.
///
/// `#[remote(max_calls = n)]` has a worker process run the function at most `n` times, then
/// hand back what it was given and be replaced by a fresh one (as Ray's `max_calls`, for
/// code that leaks memory or holds a device until its process ends).
///
/// `#[remote(num_returns = n)]`, on a function returning a tuple of `n` elements, gives each
/// element its own object (as Ray's `num_returns`): `remote` returns a tuple of `n` refs,
/// each freed, passed on and read on its own.
///
/// `#[remote(retry_if = path)]`, on a function returning a `Result<T, E>`, names a
/// `fn(&E) -> bool` that says which of its errors are worth a retry, as Ray's
/// `retry_exceptions=[SomeError]` names exception classes. With
/// `TaskOptions::retry_exceptions(true)`, a task whose function returns an `Err` runs again
/// (within its `max_retries`); without `retry_if`, every `Err` does.
///
/// `#[remote(streaming)]`, on a function returning the items it yields
/// (`impl Iterator<Item = T>`, `impl IntoIterator<Item = T>`, `Box<dyn Iterator<Item = T>>`
/// or `Vec<T>`), makes it a streaming generator (as Ray's `num_returns="streaming"`):
/// `remote` returns a `shoal::ObjectRefStream<T>` that gives each item's ref as soon as the
/// function yields it.
///
/// ```ignore
/// #[shoal::remote]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// #[shoal::remote(max_calls = 100)]
/// fn render(scene: String) -> Vec<u8> {
///     scene.into_bytes()
/// }
///
/// fn main() -> Result<(), shoal::GetError> {
///     assert_eq!(add::call(1, 2), 3); // here, in this process
///     let sum = add.remote(1, 2); // a task; its ref at once
///     let more = add.options(shoal::TaskOptions::new().num_cpus(0.5)).remote(&sum, 10);
///     assert_eq!(more.get_blocking()?, 13);
///     assert!(add::NAME.ends_with("::add"));
///     let image = render.remote("a scene".to_string()); // a worker renders 100, then ends
///     assert_eq!(image.get_blocking()?, b"a scene");
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Makes an inherent `impl` block an actor class of the Shoal mesh.
///
/// See the [crate documentation](crate#actors) for the exact expansion. In short, for
///
/// ```ignore
/// #[shoal::actor]
/// impl Counter {
///     pub fn new(start: i64) -> Self { Counter { n: start } }
///     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
///     pub fn get(&self) -> i64 { self.n }
/// }
/// ```
///
/// - `let counter = Counter::remote(0);` creates the actor in a worker process of its own
///   (running `new(0)` there) and returns a `shoal::ActorHandle<Counter>` at once;
/// - `counter.incr(1)` calls the method in the actor's process and returns a
///   `shoal::ObjectRef<i64>` at once (the handle dereferences to the generated methods);
///   `&mut self` methods run one at a time, `&self` methods may run alongside each other;
/// - `Counter::options(ActorOptions::new().name("c")).remote(0)` creates it with options
///   and returns its handle too; `try_remote(0)` returns a
///   `Result<ActorHandle<Counter>, shoal::ActorError>` instead (a name may be taken);
/// - the type keeps working locally: `Counter::new(0).incr(1)` is plain Rust.
///
/// A method marked `#[streaming]` (the attribute is removed) returns the items it yields, as
/// a `#[remote(streaming)]` function does, and its handle method returns a
/// `shoal::ObjectRefStream` of them. A method marked `#[num_returns = n]` returns a tuple of
/// `n` elements, and its handle method a tuple of `n` refs, each element its own object (as
/// a `#[remote(num_returns = n)]` function, and Ray's `@ray.method(num_returns=n)`).
///
/// The block needs a constructor `new` (synchronous, no receiver, returning `Self`). Methods
/// may be `async`. Arguments and results are sent by value, so they must be owned,
/// serializable types.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    match actor::expand(&attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // The block is kept as written, so that its local uses report no further errors.
            let mut tokens = error.into_compile_error();
            tokens.extend(item);
            tokens.into()
        }
    }
}

/// Collects several errors so that the user sees all of them at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// One parameter of a remote function or actor method, as seen by the caller side and by the
/// worker-side shim.
struct Param<'a> {
    /// The parameter's name; synthesized for a `_` parameter.
    name: Ident,
    ty: &'a Type,
}

/// The whole expansion; `attr` is what is inside `#[remote(..)]`, `item` the annotated item.
fn expand(attr: &TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let func = match syn::parse2::<syn::Item>(item)? {
        syn::Item::Fn(func) => func,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "`#[remote]` can only be applied to a free function",
            ))
        }
    };
    let mut errors = Errors::default();
    let args = remote_args(attr, &mut errors);
    let params = check_signature(&func, args.streaming, &mut errors);
    let returns = if args.streaming {
        if args.num_returns != 1 {
            errors.push(syn::Error::new_spanned(
                attr,
                "a `streaming` function gives one object per item it yields: it takes no \
                 `num_returns`",
            ));
        }
        vec![stream_item(&func.sig, &mut errors)]
    } else {
        check_returns(&func.sig, args.num_returns, &mut errors)
    };
    if let (Some(path), true) = (&args.retry_if, args.streaming || returns.len() > 1) {
        errors.push(syn::Error::new_spanned(
            path,
            "`retry_if` is for a function returning one `Result<T, E>`",
        ));
    }
    errors.finish()?;
    Ok(generate(&func, &params, &args, &returns))
}

/// The arguments of `#[remote(..)]`.
#[derive(Default)]
struct RemoteArgs {
    /// How many times one worker runs the function before it is replaced; 0: no limit.
    max_calls: u32,
    /// How many objects it returns (its tuple's elements); 1 when not given.
    num_returns: u32,
    /// A streaming generator: it returns an iterator, each item its own object.
    streaming: bool,
    /// `retry_if = path`: which `Err`s it returns are worth a retry (`retry_exceptions`).
    retry_if: Option<syn::Path>,
}

/// The arguments of `#[remote(..)]`: `max_calls = n`, `num_returns = n`, `retry_if = path`
/// and `streaming`.
fn remote_args(attr: &TokenStream2, errors: &mut Errors) -> RemoteArgs {
    let mut out = RemoteArgs {
        max_calls: 0,
        num_returns: 1,
        streaming: false,
        retry_if: None,
    };
    if attr.is_empty() {
        return out;
    }
    let parser = syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated;
    let args = match syn::parse::Parser::parse2(parser, attr.clone()) {
        Ok(args) => args,
        Err(_) => {
            errors.push(syn::Error::new_spanned(attr, ONLY_MAX_CALLS));
            return out;
        }
    };
    for arg in args {
        let arg = match arg {
            syn::Meta::Path(path) if path.is_ident("streaming") => {
                out.streaming = true;
                continue;
            }
            syn::Meta::NameValue(arg) if arg.path.is_ident("retry_if") => {
                match &arg.value {
                    syn::Expr::Path(p) if p.qself.is_none() && out.retry_if.is_none() => {
                        out.retry_if = Some(p.path.clone())
                    }
                    other => errors.push(syn::Error::new_spanned(
                        other,
                        "write `retry_if = path`, once, naming a `fn(&E) -> bool` for the \
                         function's `Result<T, E>`",
                    )),
                }
                continue;
            }
            syn::Meta::NameValue(arg) => arg,
            other => {
                errors.push(syn::Error::new_spanned(other, ONLY_MAX_CALLS));
                continue;
            }
        };
        let (key, slot, zero) = if arg.path.is_ident("max_calls") {
            (
                "max_calls",
                &mut out.max_calls,
                "`max_calls` must be at least 1 (leave it out for no limit)",
            )
        } else if arg.path.is_ident("num_returns") {
            (
                "num_returns",
                &mut out.num_returns,
                "`num_returns` must be at least 1",
            )
        } else {
            errors.push(syn::Error::new_spanned(&arg.path, ONLY_MAX_CALLS));
            continue;
        };
        let n = match &arg.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(n),
                ..
            }) => n,
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    format!("`{key}` takes a whole number"),
                ));
                continue;
            }
        };
        match n.base10_parse::<u32>() {
            Ok(0) => errors.push(syn::Error::new_spanned(n, zero)),
            Ok(v) => *slot = v,
            Err(e) => errors.push(e),
        }
    }
    out
}

/// The most returns `num_returns` may ask for (`shoal_protocol::MAX_RETURNS`).
const MAX_RETURNS: u32 = 64;

/// The types of a function's returns: its return type alone, or with `num_returns = n > 1`
/// the `n` elements of the tuple it returns.
pub(crate) fn check_returns(sig: &Signature, num_returns: u32, errors: &mut Errors) -> Vec<Type> {
    let whole = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if num_returns <= 1 {
        return vec![whole];
    }
    if num_returns > MAX_RETURNS {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            format!("`num_returns` is at most {MAX_RETURNS}"),
        ));
        return vec![whole];
    }
    let mut ty = &whole;
    while let Type::Paren(syn::TypeParen { elem, .. }) | Type::Group(syn::TypeGroup { elem, .. }) =
        ty
    {
        ty = elem;
    }
    match ty {
        Type::Tuple(tuple) if tuple.elems.len() == num_returns as usize => {
            tuple.elems.iter().cloned().collect()
        }
        _ => {
            let at = output_span(sig);
            errors.push(syn::Error::new_spanned(
                at,
                format!(
                    "with `num_returns = {num_returns}` a remote function or method returns a \
                     tuple of {num_returns} elements, one object each"
                ),
            ));
            vec![whole]
        }
    }
}

/// The type of the items a `streaming` function yields: its return type is
/// `impl Iterator<Item = T>` (or `IntoIterator`, with other bounds such as `Send`), a
/// `Box<dyn Iterator<Item = T>>`, or a `Vec<T>`.
fn stream_item(sig: &Signature, errors: &mut Errors) -> Type {
    fn item_of(ty: &Type) -> Option<Type> {
        let bounds = match ty {
            Type::Group(g) => return item_of(&g.elem),
            Type::Paren(p) => return item_of(&p.elem),
            Type::ImplTrait(t) => &t.bounds,
            Type::TraitObject(t) => &t.bounds,
            Type::Path(p) if p.qself.is_none() => {
                let last = p.path.segments.last()?;
                let PathArguments::AngleBracketed(args) = &last.arguments else {
                    return None;
                };
                let inner = args.args.iter().find_map(|a| match a {
                    GenericArgument::Type(t) => Some(t),
                    _ => None,
                })?;
                return match last.ident.to_string().as_str() {
                    "Box" => item_of(inner),
                    "Vec" | "VecDeque" => Some(inner.clone()),
                    _ => None,
                };
            }
            _ => return None,
        };
        bounds.iter().find_map(|b| match b {
            syn::TypeParamBound::Trait(t) => {
                let last = t.path.segments.last()?;
                if last.ident != "Iterator" && last.ident != "IntoIterator" {
                    return None;
                }
                let PathArguments::AngleBracketed(args) = &last.arguments else {
                    return None;
                };
                args.args.iter().find_map(|a| match a {
                    GenericArgument::AssocType(assoc) if assoc.ident == "Item" => {
                        Some(assoc.ty.clone())
                    }
                    _ => None,
                })
            }
            _ => None,
        })
    }
    let found = match &sig.output {
        ReturnType::Type(_, ty) => item_of(ty),
        ReturnType::Default => None,
    };
    match found {
        Some(item) => {
            if let Some(error) = unsupported_type(&item, Subject::RemoteFn) {
                errors.push(error);
            }
            item
        }
        None => {
            let at = output_span(sig);
            errors.push(syn::Error::new_spanned(
                at,
                "a `streaming` remote function returns the items it yields: \
                 `impl Iterator<Item = T>` (or `IntoIterator`), `Box<dyn Iterator<Item = T>>` \
                 or `Vec<T>`",
            ));
            syn::parse_quote!(())
        }
    }
}

/// Where an error about a function's return type points: the type, or the function's name
/// when it has none.
fn output_span(sig: &Signature) -> &dyn quote::ToTokens {
    match &sig.output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => &sig.ident,
    }
}

/// What `#[remote(..)]` says to an argument it does not take.
const ONLY_MAX_CALLS: &str = "`#[remote]` takes only `max_calls = n`, `num_returns = n`, \
                              `retry_if = path` and `streaming`; per-call options go through \
                              `.options(..).remote(..)`";

/// What a signature belongs to, for the wording of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    /// A `#[remote]` free function.
    RemoteFn,
    /// A `&self`/`&mut self` method of an `#[actor]`.
    ActorMethod,
    /// The `new` constructor of an `#[actor]`.
    ActorConstructor,
}

impl Subject {
    /// The subject with an article, as the start of a sentence: "a remote function".
    fn noun(self) -> &'static str {
        match self {
            Subject::RemoteFn => "a remote function",
            Subject::ActorMethod => "an actor method",
            Subject::ActorConstructor => "an actor's constructor",
        }
    }

    /// What the caller creates by calling it: the thing that runs elsewhere.
    fn caller(self) -> &'static str {
        match self {
            Subject::RemoteFn => "a task's caller",
            Subject::ActorMethod | Subject::ActorConstructor => "a remote caller",
        }
    }
}

/// Rejects what a remote function cannot be and returns its parameters.
fn check_signature<'a>(func: &'a ItemFn, streaming: bool, errors: &mut Errors) -> Vec<Param<'a>> {
    let sig = &func.sig;
    check_fn_header(sig, Subject::RemoteFn, errors);
    let mut params = Vec::with_capacity(sig.inputs.len());
    for (index, input) in sig.inputs.iter().enumerate() {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                errors.push(syn::Error::new_spanned(
                    receiver,
                    "`#[remote]` applies to free functions, not methods: a remote function \
                     cannot take `self`",
                ));
                continue;
            }
            FnArg::Typed(typed) => typed,
        };
        let Some(param) = check_param(index, typed, Subject::RemoteFn, errors) else {
            continue;
        };
        if param.name.unraw() == sig.ident.unraw() {
            errors.push(syn::Error::new_spanned(
                &param.name,
                "a parameter of a remote function cannot have the function's name: that name \
                 becomes a unit struct, which a parameter pattern would match against; \
                 rename the parameter",
            ));
            continue;
        }
        params.push(param);
    }
    // (A streaming function returns an iterator, whose items are checked instead.)
    if !streaming {
        check_return_type(sig, Subject::RemoteFn, errors);
    }
    params
}

/// Rejects qualifiers and generics that a function called by name from another process
/// cannot have: `unsafe`, an ABI, generic parameters, a `where` clause, a variadic.
fn check_fn_header(sig: &Signature, subject: Subject, errors: &mut Errors) {
    let noun = subject.noun();
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            format!(
                "{noun} cannot be `unsafe fn`: {} cannot uphold its safety contract; make \
                 the function safe and use `unsafe` blocks inside",
                subject.caller(),
            ),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            format!("{noun} cannot declare an ABI; remove the `extern`"),
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics.params,
            format!(
                "{noun} cannot be generic: a worker must know the concrete types to \
                 deserialize its arguments; write a non-generic wrapper for each type"
            ),
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            where_clause,
            format!("{noun} cannot have a `where` clause"),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            format!("{noun} cannot be variadic"),
        ));
    }
}

/// Checks one typed parameter (the `index`th input of the signature): no attributes, a
/// supported type, a plain name. `None` if it cannot be used (an error was pushed).
fn check_param<'a>(
    index: usize,
    typed: &'a PatType,
    subject: Subject,
    errors: &mut Errors,
) -> Option<Param<'a>> {
    let noun = subject.noun();
    if let Some(attr) = typed.attrs.first() {
        errors.push(syn::Error::new_spanned(
            attr,
            format!("attributes on the parameters of {noun} are not supported"),
        ));
    }
    if let Some(error) = unsupported_type(&typed.ty, subject) {
        errors.push(error);
    }
    let name = match &*typed.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
        // `_: T` is accepted: the argument is still sent, the body just ignores it.
        Pat::Wild(_) => format_ident!("__shoal_arg{}", index, span = Span::mixed_site()),
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                format!(
                    "the parameters of {noun} must be plain names (`name: Type`); \
                     destructure inside the body instead"
                ),
            ));
            return None;
        }
    };
    Some(Param {
        name,
        ty: &typed.ty,
    })
}

/// Checks the return type, if any (it travels back by value).
fn check_return_type(sig: &Signature, subject: Subject, errors: &mut Errors) {
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(error) = unsupported_type(ty, subject) {
            errors.push(error);
        }
    }
}

/// An error for a type that cannot travel between processes as a task argument or result:
/// `impl Trait` anywhere (the type must be concrete) or a borrowed type at the top level.
fn unsupported_type(ty: &Type, subject: Subject) -> Option<syn::Error> {
    match ty {
        Type::Reference(reference) => Some(syn::Error::new_spanned(
            reference,
            format!(
                "borrowed types are not supported in the signature of {}: arguments and \
                 results cross process boundaries by value; use an owned type (e.g. \
                 `String` instead of `&str`, `Vec<T>` instead of `&[T]`)",
                subject.noun(),
            ),
        )),
        Type::Group(group) => unsupported_type(&group.elem, subject),
        Type::Paren(paren) => unsupported_type(&paren.elem, subject),
        other => find_impl_trait(other, subject),
    }
}

/// An error for the first `impl Trait` inside `ty`, if any.
fn find_impl_trait(ty: &Type, subject: Subject) -> Option<syn::Error> {
    let recurse = |ty: &Type| find_impl_trait(ty, subject);
    match ty {
        Type::ImplTrait(impl_trait) => Some(syn::Error::new_spanned(
            impl_trait,
            format!(
                "`impl Trait` is not supported in the signature of {}: a worker must know \
                 the concrete type to (de)serialize it; use a concrete type",
                subject.noun(),
            ),
        )),
        Type::Array(array) => recurse(&array.elem),
        Type::Group(group) => recurse(&group.elem),
        Type::Paren(paren) => recurse(&paren.elem),
        Type::Ptr(ptr) => recurse(&ptr.elem),
        Type::Reference(reference) => recurse(&reference.elem),
        Type::Slice(slice) => recurse(&slice.elem),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(recurse),
        Type::Path(path) => path
            .qself
            .as_ref()
            .and_then(|qself| recurse(&qself.ty))
            .or_else(|| {
                path.path
                    .segments
                    .iter()
                    .find_map(|segment| match &segment.arguments {
                        PathArguments::AngleBracketed(args) => {
                            args.args.iter().find_map(|arg| match arg {
                                GenericArgument::Type(ty) => recurse(ty),
                                GenericArgument::AssocType(assoc) => recurse(&assoc.ty),
                                _ => None,
                            })
                        }
                        _ => None,
                    })
            }),
        _ => None,
    }
}

/// Whether `attr` is a doc comment (`///`, `//!` or `#[doc = ..]`) or another `#[doc(..)]`.
fn is_doc(attr: &Attribute) -> bool {
    attr.path().is_ident("doc")
}

/// Whether `attr` is `#[cfg(..)]`, which must apply to every generated item.
fn is_cfg(attr: &Attribute) -> bool {
    attr.path().is_ident("cfg")
}

/// The expansion of a checked function; see the crate documentation.
fn generate(
    func: &ItemFn,
    params: &[Param<'_>],
    args: &RemoteArgs,
    returns: &[Type],
) -> TokenStream2 {
    let streaming = args.streaming;
    let vis = &func.vis;
    let name = &func.sig.ident;
    let name_str = name.unraw().to_string();
    let helper = format_ident!("__shoal_remote_{}", name_str, span = name.span());

    let docs: Vec<&Attribute> = func.attrs.iter().filter(|a| is_doc(a)).collect();
    let cfgs: Vec<&Attribute> = func.attrs.iter().filter(|a| is_cfg(a)).collect();
    let others = func.attrs.iter().filter(|a| !is_doc(a) && !is_cfg(a));
    let call_doc_sep = if docs.is_empty() {
        quote!()
    } else {
        quote!(#[doc = ""])
    };

    // `call` is the original function under another name: same signature, same body.
    let mut call_sig = func.sig.clone();
    call_sig.ident = Ident::new("call", name.span());
    let body = &func.block;

    let ret = match &func.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    // Spanned at each parameter's type, so that "`T: IntoArg<T>` is not satisfied" points there.
    let remote_params = params
        .iter()
        .map(|Param { name, ty }| quote_spanned!(ty.span()=> #name: impl ::shoal::IntoArg<#ty>));
    let remote_params = quote!(#(#remote_params),*);
    let names = params.iter().map(|p| &p.name);
    let types = params.iter().map(|p| p.ty);
    let arg_vec = quote! {
        ::std::vec![#(::shoal::IntoArg::<#types>::into_arg(#names)),*]
    };
    let registration = registration(func, params, args, returns);
    // What `remote` returns, and how: one ref, or one per element of the tuple.
    let fn_name = Ident::new("__shoal_name", Span::mixed_site());
    let options = Ident::new("__shoal_options", Span::mixed_site());
    let (remote_ret, submit_with) = if streaming {
        let item = &returns[0];
        (
            quote!(::shoal::ObjectRefStream<#item>),
            quote!(::shoal::__private::submit_stream::<#item>(#fn_name, #options, #arg_vec)),
        )
    } else if returns.len() > 1 {
        let n = returns.len() as u32;
        let refs = Ident::new("__shoal_returns", Span::mixed_site());
        (
            quote!((#(::shoal::ObjectRef<#returns>),*)),
            quote! {{
                let mut #refs = ::shoal::__private::submit_several(#fn_name, #options, #arg_vec, #n);
                (#(#refs.take::<#returns>()),*)
            }},
        )
    } else {
        (
            quote!(::shoal::ObjectRef<#ret>),
            quote!(::shoal::__private::submit::<#ret>(#fn_name, #options, #arg_vec)),
        )
    };
    // With the function's span, diagnostics about the struct (`missing_docs`, privacy) point
    // at the function's name rather than at the attribute.
    let unit_struct = quote_spanned!(name.span()=> #vis struct #name;);

    quote! {
        #(#cfgs)*
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::fmt::Debug,
            ::core::default::Default
        )]
        #unit_struct

        #(#cfgs)*
        #[allow(non_camel_case_types)]
        #[doc(hidden)]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #helper {
            options: ::shoal::TaskOptions,
        }

        #(#cfgs)*
        impl #name {
            /// The name under which the function is registered in the binary.
            #vis const NAME: &str = ::core::concat!(::core::module_path!(), "::", #name_str);

            /// Runs the function here, in this process (the original body).
            #call_doc_sep
            #(#docs)*
            #(#others)*
            #vis #call_sig #body

            /// Runs the function as a task and returns a reference to its result at once.
            #[allow(clippy::too_many_arguments)]
            #vis fn remote(&self, #remote_params) -> #remote_ret {
                let #fn_name = Self::NAME;
                let #options = &<::shoal::TaskOptions as ::core::default::Default>::default();
                #submit_with
            }

            /// The same with per-call options (resources, retries).
            #vis fn options(&self, options: ::shoal::TaskOptions) -> #helper {
                #helper { options }
            }
        }

        #(#cfgs)*
        impl #helper {
            /// Runs the function as a task with these options.
            #[allow(clippy::too_many_arguments)]
            #vis fn remote(&self, #remote_params) -> #remote_ret {
                let #fn_name = #name::NAME;
                let #options = &self.options;
                #submit_with
            }
        }

        #(#cfgs)*
        #registration
    }
}

/// The worker side: a shim that decodes the arguments, runs `call` and encodes the result,
/// its entry in the registry, and the constructor that enters worker mode before `main`.
fn registration(
    func: &ItemFn,
    params: &[Param<'_>],
    remote_args: &RemoteArgs,
    returns: &[Type],
) -> TokenStream2 {
    let (max_calls, streaming) = (remote_args.max_calls, remote_args.streaming);
    let name = &func.sig.ident;
    let names = params.iter().map(|p| &p.name);
    // Mixed-site hygiene: a parameter of the user's function cannot shadow it.
    let args = Ident::new("__shoal_args", Span::mixed_site());
    // Spanned at the types, so that a missing `DeserializeOwned` or `Serialize` is reported
    // at the parameter or return type that lacks it.
    let takes = params
        .iter()
        .enumerate()
        .map(|(index, Param { name, ty })| {
            let index = Literal::usize_unsuffixed(index);
            quote_spanned!(ty.span()=> let #name: #ty = #args.take(#index)?;)
        });
    let run = if func.sig.asyncness.is_some() {
        quote!(::shoal::__private::block_on(#name::call(#(#names),*)))
    } else {
        quote!(#name::call(#(#names),*))
    };
    let encode = match &func.sig.output {
        _ if streaming => {
            let item = &returns[0];
            quote_spanned!(item.span()=> ::shoal::__private::yield_items::<#item>(#run))
        }
        _ if returns.len() > 1 => {
            // Each element its own object: the others first, then the first.
            let values: Vec<Ident> = (0..returns.len())
                .map(|i| Ident::new(&format!("__shoal_return{i}"), Span::mixed_site()))
                .collect();
            let (first, rest) = (&values[0], &values[1..]);
            let (first_ty, rest_tys) = (&returns[0], &returns[1..]);
            let more = rest.iter().zip(rest_tys).map(|(v, ty)| {
                quote_spanned!(ty.span()=> ::shoal::__private::encode_return::<#ty>(&#v)?;)
            });
            quote! {
                let (#(#values),*) = #run;
                #(#more)*
                ::shoal::__private::encode_result::<#first_ty>(&#first)
            }
        }
        ReturnType::Default => quote!(::shoal::__private::encode_result(&#run)),
        ReturnType::Type(_, ty) => {
            // Whether it returned an `Err` worth a retry: any `Err` of a `Result`, or those
            // its `retry_if` accepts (resolved by the type: nothing for other types).
            let value = Ident::new("__shoal_value", Span::mixed_site());
            let returned_error = match &remote_args.retry_if {
                Some(path) => quote_spanned! {path.span()=>
                    ::shoal::__private::err_where(&#value, #path)
                },
                None => quote! {{
                    #[allow(unused_imports)]
                    use ::shoal::__private::{IsErr as _, NotErr as _};
                    (&::shoal::__private::Classify(&#value)).returned_err()
                }},
            };
            quote_spanned! {ty.span()=>
                let #value: #ty = #run;
                ::shoal::__private::mark_returned_error(#returned_error);
                ::shoal::__private::encode_result::<#ty>(&#value)
            }
        }
    };
    let args_param = if params.is_empty() {
        quote!(_: ::shoal::__private::Args)
    } else {
        quote!(mut #args: ::shoal::__private::Args)
    };
    let ctor = worker_ctor_static();

    quote! {
        const _: () = {
            fn __shoal_invoke(
                #args_param,
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::shoal::TaskError> {
                #(#takes)*
                #encode
            }

            #[::shoal::__private::linkme::distributed_slice(::shoal::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::shoal::__private::linkme)]
            static __SHOAL_REGISTER: ::shoal::__private::RemoteFunction =
                ::shoal::__private::RemoteFunction {
                    name: #name::NAME,
                    invoke: __shoal_invoke,
                    max_calls: #max_calls,
                };

            #ctor
        };
    }
}

/// The static that makes the SDK enter worker mode before `main` (and before libtest's
/// `main` in test binaries): a constructor in the user's own object code, so that it is in
/// every binary that links the crate defining a remote function or an actor. It runs once per
/// such item, so `worker_ctor` must be idempotent and cheap. Other targets get none.
/// Emitted inside a `const _: () = { .. };` block.
fn worker_ctor_static() -> TokenStream2 {
    quote! {
        #[used]
        #[cfg_attr(
            any(target_os = "linux", target_os = "android", target_os = "freebsd"),
            unsafe(link_section = ".init_array")
        )]
        #[cfg_attr(target_vendor = "apple", unsafe(link_section = "__DATA,__mod_init_func"))]
        static __SHOAL_CTOR: extern "C" fn() = ::shoal::__private::worker_ctor;
    }
}

/// Helpers for the expansion tests of both attributes.
#[cfg(test)]
pub(crate) mod test_util {
    use proc_macro2::TokenStream as TokenStream2;

    /// An attribute's expansion function.
    pub(crate) type Expand = fn(&TokenStream2, TokenStream2) -> syn::Result<TokenStream2>;

    fn tokens(source: &str) -> TokenStream2 {
        source.parse().expect("test input must tokenize")
    }

    /// The messages of all errors for `#[attr(args)] item`.
    pub(crate) fn error(expand: Expand, args: &str, item: &str) -> String {
        match expand(&tokens(args), tokens(item)) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(error) => error
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The expansion of `#[attr] item`, as a string.
    pub(crate) fn expands(expand: Expand, item: &str) -> String {
        match expand(&TokenStream2::new(), tokens(item)) {
            Ok(tokens) => tokens.to_string(),
            Err(error) => panic!("unexpected error: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(attr: &str, item: &str) -> String {
        test_util::error(expand, attr, item)
    }

    fn expands(item: &str) -> String {
        test_util::expands(expand, item)
    }

    #[test]
    fn accepts_plain_functions() {
        let out = expands("/// Adds.\npub fn add(a: i64, b: i64) -> i64 { a + b }");
        assert!(out.contains("pub struct add ;"), "{out}");
        assert!(out.contains("pub struct __shoal_remote_add"), "{out}");
        assert!(
            out.contains("pub fn call (a : i64 , b : i64) -> i64 { a + b }"),
            "{out}"
        );
        assert!(out.contains(":: shoal :: ObjectRef < i64 >"), "{out}");
        assert!(out.contains("REMOTE_FUNCTIONS"), "{out}");
    }

    #[test]
    fn unit_return_and_no_params() {
        let out = expands("fn tick() {}");
        assert!(out.contains(":: shoal :: ObjectRef < () >"), "{out}");
        assert!(out.contains("submit :: < () >"), "{out}");
        assert!(out.contains("_ : :: shoal :: __private :: Args"), "{out}");
    }

    #[test]
    fn async_runs_under_block_on() {
        let out = expands("pub(crate) async fn fetch(n: u32) -> String { n.to_string() }");
        assert!(
            out.contains("pub (crate) async fn call (n : u32) -> String"),
            "{out}"
        );
        assert!(out.contains("block_on (fetch :: call (n))"), "{out}");
    }

    #[test]
    fn raw_identifiers_register_without_prefix() {
        let out = expands("fn r#type() {}");
        assert!(out.contains("\"type\""), "{out}");
        assert!(out.contains("__shoal_remote_type"), "{out}");
    }

    #[test]
    fn rejects_arguments() {
        assert!(error("retries = 3", "fn f() {}").contains("takes only `max_calls"));
        assert!(error("max_calls = 0", "fn f() {}").contains("at least 1"));
        assert!(error("max_calls = \"2\"", "fn f() {}").contains("whole number"));
        assert!(error("max_calls", "fn f() {}").contains("takes only `max_calls"));
    }

    #[test]
    fn retry_if_takes_a_path_for_one_result() {
        let f = "fn f() -> Result<u8, String> { Ok(1) }";
        let out = expand(&quote!(retry_if = worth), f.parse().unwrap())
            .unwrap()
            .to_string();
        assert!(out.contains("err_where (& __shoal_value , worth)"), "{out}");
        let plain = expand(&quote!(), f.parse().unwrap()).unwrap().to_string();
        assert!(plain.contains("Classify"), "{plain}");
        assert!(error("retry_if = 3", f).contains("`retry_if = path`"));
        assert!(error("retry_if = a, retry_if = b", f).contains("once"));
        let tuple = "fn f() -> (u8, u8) { (1, 2) }";
        assert!(error("num_returns = 2, retry_if = a", tuple).contains("one `Result<T, E>`"));
    }

    #[test]
    fn num_returns_takes_a_tuple_of_that_many() {
        let tuple = "fn f() -> (u8, String) { (1, String::new()) }";
        assert!(error("num_returns = 3", tuple).contains("a tuple of 3 elements"));
        assert!(error("num_returns = 2", "fn f() -> u8 { 1 }").contains("a tuple of 2"));
        assert!(error("num_returns = 2", "fn f() {}").contains("a tuple of 2"));
        assert!(error("num_returns = 0", tuple).contains("at least 1"));
        assert!(error("num_returns = 65", tuple).contains("at most 64"));
        let out = expand(&quote!(num_returns = 2), tuple.parse().unwrap())
            .unwrap()
            .to_string();
        assert!(
            out.contains("-> (:: shoal :: ObjectRef < u8 > , :: shoal :: ObjectRef < String >)"),
            "{out}"
        );
        assert!(out.contains("submit_several"), "{out}");
        assert!(out.contains("encode_return :: < String >"), "{out}");
        // One return: the tuple is one object.
        let one = expand(&quote!(num_returns = 1), tuple.parse().unwrap())
            .unwrap()
            .to_string();
        assert!(
            one.contains("-> :: shoal :: ObjectRef < (u8 , String) >"),
            "{one}"
        );
    }

    #[test]
    fn a_streaming_function_returns_its_items_and_gives_a_stream() {
        for ret in [
            "impl Iterator<Item = u64> + Send",
            "impl IntoIterator<Item = u64>",
            "Box<dyn Iterator<Item = u64>>",
            "Vec<u64>",
        ] {
            let item = format!("fn f(n: u64) -> {ret} {{ todo!() }}");
            let out = expand(&quote!(streaming), item.parse().unwrap())
                .unwrap()
                .to_string();
            assert!(
                out.contains("-> :: shoal :: ObjectRefStream < u64 >"),
                "{ret}: {out}"
            );
            assert!(out.contains("submit_stream :: < u64 >"), "{out}");
            assert!(
                out.contains("yield_items :: < u64 > (f :: call (n))"),
                "{out}"
            );
        }
        let not_items = "fn f() -> u64 { 1 }";
        assert!(error("streaming", not_items).contains("returns the items it yields"));
        assert!(error("streaming", "fn f() {}").contains("returns the items it yields"));
        let borrowed = "fn f() -> impl Iterator<Item = &'static str> { todo!() }";
        assert!(error("streaming", borrowed).contains("borrowed types"));
        let both = "fn f() -> Vec<u8> { todo!() }";
        assert!(error("streaming, num_returns = 2", both).contains("no `num_returns`"));
        // Without `streaming`, `impl Trait` is still refused.
        let plain = "fn f() -> impl Iterator<Item = u8> { todo!() }";
        assert!(error("", plain).contains("`impl Trait` is not supported"));
    }

    #[test]
    fn max_calls_goes_to_the_registry() {
        let out = expand(
            &quote!(max_calls = 3),
            quote!(
                fn f() {}
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("max_calls : 3u32"), "{out}");
        assert!(expands("fn f() {}").contains("max_calls : 0u32"));
    }

    #[test]
    fn rejects_non_functions() {
        assert!(error("", "struct S;").contains("can only be applied to a free function"));
    }

    #[test]
    fn rejects_methods() {
        assert!(error("", "fn f(&self) {}").contains("cannot take `self`"));
    }

    #[test]
    fn rejects_generics() {
        assert!(error("", "fn f<T>(x: T) {}").contains("cannot be generic"));
        assert!(error("", "fn f<'a>() {}").contains("cannot be generic"));
        assert!(error("", "fn f() where i32: Copy {}").contains("`where` clause"));
    }

    #[test]
    fn rejects_patterns() {
        let message = error("", "fn f((a, b): (i32, i32)) {}");
        assert!(message.contains("must be plain names"), "{message}");
        let message = error("", "fn f(ref a: i32) {}");
        assert!(message.contains("must be plain names"), "{message}");
    }

    #[test]
    fn rejects_parameters_named_like_the_function() {
        let message = error("", "fn count(count: u32) {}");
        assert!(message.contains("the function's name"), "{message}");
    }

    #[test]
    fn accepts_mut_and_wildcard_params() {
        let out = expands("fn f(mut a: i32, _: u8) -> i32 { a += 1; a }");
        assert!(out.contains("fn call (mut a : i32 , _ : u8)"), "{out}");
        assert!(
            out.contains("__shoal_arg1 : impl :: shoal :: IntoArg < u8 >"),
            "{out}"
        );
    }

    #[test]
    fn rejects_impl_trait() {
        let message = error("", "fn f(x: impl Into<i32>) {}");
        assert!(message.contains("`impl Trait`"), "{message}");
        let message = error("", "fn f(x: Vec<impl Clone>) {}");
        assert!(message.contains("`impl Trait`"), "{message}");
        let message = error("", "fn f() -> impl Clone { 1 }");
        assert!(message.contains("`impl Trait`"), "{message}");
    }

    #[test]
    fn rejects_references() {
        let message = error("", "fn f(s: &str) {}");
        assert!(message.contains("borrowed types"), "{message}");
        let message = error("", "fn f() -> &'static str { \"\" }");
        assert!(message.contains("borrowed types"), "{message}");
    }

    #[test]
    fn rejects_unsafe_extern_and_variadic() {
        assert!(error("", "unsafe fn f() {}").contains("`unsafe fn`"));
        assert!(error("", "extern \"C\" fn f() {}").contains("ABI"));
        let message = error("", "unsafe extern \"C\" fn f(a: i32, ...) {}");
        assert!(message.contains("variadic"), "{message}");
    }

    #[test]
    fn rejects_parameter_attributes() {
        let message = error("", "fn f(#[cfg(x)] a: i32) {}");
        assert!(
            message.contains("attributes on the parameters"),
            "{message}"
        );
    }

    #[test]
    fn reports_every_error_at_once() {
        let message = error("x", "fn f<T>(&self, (a, b): (T, T)) {}");
        for expected in [
            "takes only `max_calls",
            "cannot be generic",
            "`self`",
            "plain names",
        ] {
            assert!(message.contains(expected), "{expected}: {message}");
        }
    }
}
