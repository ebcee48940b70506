//! Fuzzing on the stable toolchain, with no extra tools: every decoder that reads bytes from
//! outside the process (a local process, a peer, the DHT) is fed random, mutated and
//! structure-aware inputs, and must never panic, hang or allocate out of proportion with its
//! input.
//!
//! Layout:
//! - [`targets`]: the registry, one [`Target`] per decoder.
//! - [`target`]: what a target is, and the helpers that make one in a line.
//! - [`gen`]: structure-aware inputs: a random value of any `Deserialize` type, encoded.
//! - [`mutate`]: edits of valid encodings (bit flips, cuts, length fields, splices).
//! - [`rng`]: the seeded generator that makes a run repeatable.
//! - [`alloc`]: the counting global allocator behind the allocation bound.
//! - [`runner`]: the loop, the watchdog, crash files and replays.
//!
//! Run it with `cargo run --release -p shoal-fuzz -- --seconds 5 [TARGET...]` (see
//! `--help` and fuzz/README.md). Each input runs under `catch_unwind` and the allocation
//! meter ([`runner::alloc_bound`]: 64 bytes per input byte plus 4 MiB); an input that
//! panics, holds more, or takes longer than the hang limit is written to
//! `fuzz/crashes/<target>-<hash>` and the run exits non-zero, printing how to replay it.
//! Fixed crashes are kept in `fuzz/regressions/<target>/`, which `cargo test -p shoal-fuzz`
//! replays.
//!
//! Adding a target is one line in [`targets::all`]. For a serde type decoded with the codec
//! (as the manifest target is), the line is
//!
//! ```text
//! Target::message::<Manifest>("manifest", "a code manifest, shipped with a binary", MAX_MANIFEST),
//! ```
//!
//! which brings a generator with it; for any other entry point (a token parsed from text),
//! `Target::new("join_token", "…", |b| Verdict::of(&JoinToken::parse(b)))`. Add hand-made
//! seeds with `.seed_values(..)` or `.seeds(..)`.

pub mod alloc;
pub mod gen;
pub mod mutate;
pub mod rng;
pub mod runner;
pub mod target;
pub mod targets;

pub use target::{Target, Verdict};

/// Every allocation of a program linking this crate (the fuzzer and its tests) is counted.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
