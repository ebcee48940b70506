//! The workload of the chaos soak (issue 12 item 7, `scripts/chaos`): one driver attached to
//! a node (`SHOAL_SOCKET`), mixing for a given time
//!
//! - tasks with large (1–4 MiB) results passed on as arguments of other tasks,
//! - large objects `put` by the driver, passed to tasks and read back,
//! - nested tasks (a task that submits tasks and sums their results),
//! - calls to a named actor with restarts (and, now and then, to another driver's named
//!   actor, looked up by name),
//! - now and then a small parameter-server round (an actor and worker tasks that update it),
//!
//! with a bounded window of work in flight. It knows every expected value and checks every
//! result: a value that differs is a *wrong result*. Every reference has a bound (from its
//! submission, `--bound`, 120 s by default): unresolved past it, it is a *hang*. Failures are
//! counted by kind, the name of the error's variant (`PeerLost`, `ActorDied`, …; `Put:…` for a
//! failed `put`, `Lookup:…` for a named actor not found), so that new variants are counted
//! without a change here; the runner decides which kinds are allowed.
//!
//! At the end it prints one JSON line to stdout (see [`Stats`]) and exits 0; it exits
//! non-zero only if it cannot attach to its node.
//!
//! Run with: `SHOAL_SOCKET=<node socket> cargo run --release --example chaos_driver --
//! [--seconds N] [--bound SECS] [--seed N] [--driver N] [--drivers N] [--run NAME]
//! [--window N]`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use shoal::{ActorHandle, ActorOptions, Bytes, GetError, InitOptions, ObjectRef, TaskOptions};

const MIB: u64 = 1 << 20;

/// A 64-bit mix (splitmix64's finaliser).
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `len` bytes made from `seed` (every 8 bytes a word of their own, so a byte out of place
/// shows).
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    let mut i = 0u64;
    while (v.len() as u64) < len {
        let w = mix64(seed ^ i.wrapping_mul(0x0100_0000_01b3)).to_le_bytes();
        let take = (len as usize - v.len()).min(8);
        v.extend_from_slice(&w[..take]);
        i += 1;
    }
    v
}

/// A digest of `bytes`: their length and every 8-byte word, mixed.
fn digest(bytes: &[u8]) -> u64 {
    let mut h = mix64(bytes.len() as u64);
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(w));
    }
    h
}

/// The kind of a failed `get`: the name of the error's variant (the task error's, for a
/// failed task), e.g. `PeerLost`; `Timeout` for a bound that passed.
fn kind(e: &GetError) -> String {
    let debug = match e {
        GetError::Task(t) => format!("{t:?}"),
        other => format!("{other:?}"),
    };
    debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// What the driver is blocked on, and since when: a watchdog thread prints it when it lasts
/// (a hang shows where it is in the driver's log).
static DOING: std::sync::Mutex<Option<(&'static str, Instant)>> = std::sync::Mutex::new(None);

/// Notes that the driver is about to block on `what`.
fn doing(what: &'static str) {
    if let Ok(mut d) = DOING.lock() {
        *d = Some((what, Instant::now()));
    }
}

/// Prints, every 10 s, what the driver has been blocked on for more than 20 s.
fn watchdog() -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(10));
            if let Ok(d) = DOING.lock() {
                if let Some((what, since)) = *d {
                    if since.elapsed() > Duration::from_secs(20) {
                        eprintln!("watchdog: blocked on {what} for {:?}", since.elapsed());
                    }
                }
            }
        })?;
    Ok(())
}

/// How long a value that has arrived (resolved within its bound) may take to read: a large
/// one may have to be pulled from another peer first.
const READ_GRACE: Duration = Duration::from_secs(30);

/// The value of `r`, waited for until `deadline`. A reference resolved by then whose value
/// takes longer to read (a pull) is given [`READ_GRACE`] more: only one unresolved past its
/// bound is a hang (`Timeout`).
fn get_by<T: serde::de::DeserializeOwned>(
    r: &ObjectRef<T>,
    deadline: Instant,
) -> Result<T, GetError> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let got = match r.get_blocking_timeout(left) {
        Err(GetError::Timeout(_)) if r.is_ready() => r.get_blocking_timeout(READ_GRACE),
        other => other,
    };
    if let Err(GetError::Timeout(_)) = &got {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "hang at unix time {:.3}: object {} unresolved past its bound",
            now.as_secs_f64(),
            r.id()
        );
    }
    got
}

/// How long a lookup of a named actor may take (its retries of NotFound for 10 s included).
const LOOKUP_BOUND: Duration = Duration::from_secs(30);

/// The outcome kind that stands for a hang.
const HANG: &str = "Timeout";

/// A block of `len` bytes made from `seed`: a large task result.
#[shoal::remote]
fn make_block(seed: u64, len: u64) -> Bytes {
    Bytes(pattern(seed, len))
}

/// The digest of a block (a large argument).
#[shoal::remote]
fn digest_block(block: Bytes) -> u64 {
    digest(&block.0)
}

/// A small task.
#[shoal::remote]
fn add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

/// A nested task: submits `fanout` pairs of tasks (a block of `len` bytes, then its digest)
/// and a small one, and returns the sum of their results; or the kind of the first failure
/// (`Timeout` if a result took longer than `bound_ms`).
#[shoal::remote]
fn nested(seed: u64, fanout: u64, len: u64, bound_ms: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let digests: Vec<ObjectRef<u64>> = (0..fanout)
        .map(|i| {
            let block = make_block.remote(seed.wrapping_add(i), len);
            digest_block.remote(&block)
        })
        .collect();
    let small = add.remote(seed, fanout);
    let mut sum = get_by(&small, deadline).map_err(|e| kind(&e))?;
    for d in &digests {
        sum = sum.wrapping_add(get_by(d, deadline).map_err(|e| kind(&e))?);
    }
    Ok(sum)
}

/// What [`nested`] returns when nothing fails.
fn nested_expected(seed: u64, fanout: u64, len: u64) -> u64 {
    (0..fanout).fold(seed.wrapping_add(fanout), |sum, i| {
        sum.wrapping_add(digest(&pattern(seed.wrapping_add(i), len)))
    })
}

/// The named actor each driver calls: pure methods, so that every answer is known whatever
/// incarnation gives it.
pub struct Mixer {
    tag: u64,
}

#[shoal::actor]
impl Mixer {
    /// An actor whose answers depend on `tag`.
    pub fn new(tag: u64) -> Self {
        Mixer { tag }
    }

    /// `mix64(x ^ tag)`.
    pub fn mix(&self, x: u64) -> u64 {
        mix64(x ^ self.tag)
    }

    /// The digest of a block, mixed with the tag (a large argument to an actor).
    pub fn digest(&self, block: Bytes) -> u64 {
        mix64(digest(&block.0) ^ self.tag)
    }
}

/// A parameter server: parameters and the number of updates applied. Every update adds 1.0
/// to every parameter, so each parameter always equals that number.
pub struct ParamServer {
    params: Vec<f64>,
    updates: u64,
}

#[shoal::actor]
impl ParamServer {
    /// `dim` parameters, all zero.
    pub fn new(dim: usize) -> Self {
        ParamServer {
            params: vec![0.0; dim],
            updates: 0,
        }
    }

    /// The parameters and the number of updates applied.
    pub fn state(&self) -> (Vec<f64>, u64) {
        (self.params.clone(), self.updates)
    }

    /// Adds a gradient.
    pub fn update(&mut self, grad: Vec<f64>) {
        for (p, g) in self.params.iter_mut().zip(grad) {
            *p += g;
        }
        self.updates += 1;
    }
}

/// A parameter-server worker: `iters` times, reads the parameters and pushes an update of
/// ones. Returns `iters` once its last update is applied, or the kind of the first failure.
#[shoal::remote]
fn ps_worker(server: ActorHandle<ParamServer>, iters: u32, bound_ms: u64) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let mut last = None;
    for _ in 0..iters {
        let (params, _) = get_by(&server.state(), deadline).map_err(|e| kind(&e))?;
        last = Some(server.update(vec![1.0; params.len()]));
    }
    if let Some(last) = last {
        get_by(&last, deadline).map_err(|e| kind(&e))?;
    }
    Ok(iters)
}

/// What the driver prints at the end (one JSON line).
#[derive(Debug, Default, Serialize)]
struct Stats {
    /// Which driver.
    driver: u64,
    /// How long it submitted work, in seconds.
    seconds: f64,
    /// Tasks submitted by the driver (not counting those its nested tasks submit).
    tasks_submitted: u64,
    /// Nested tasks among them.
    nested_tasks: u64,
    /// Calls to actors (the named ones and the parameter servers).
    actor_calls: u64,
    /// Named actors made (the first, and again after one was dead for good).
    actors_created: u64,
    /// Lookups of another driver's named actor, and how many found it.
    lookups: u64,
    /// Lookups that found the actor.
    lookups_found: u64,
    /// Lookups by name that had not returned after [`LOOKUP_BOUND`] (`shoal::get_actor` has
    /// no bound of its own).
    lookup_hangs: u64,
    /// Parameter-server rounds, and those in which every worker ended well (so the final
    /// count is checked exactly).
    ps_rounds: u64,
    /// Rounds whose every worker succeeded.
    ps_rounds_complete: u64,
    /// `put`s, and the bytes put.
    puts: u64,
    /// Bytes put.
    put_bytes: u64,
    /// `get`s (each reference the driver waited on).
    gets: u64,
    /// Results compared with their expected value.
    checked: u64,
    /// Results that were right.
    ok: u64,
    /// Results that were wrong (must be 0).
    wrong: u64,
    /// References unresolved past the bound (must be 0).
    hangs: u64,
    /// Failures by kind.
    errors: BTreeMap<String, u64>,
    /// The first few wrong results, described.
    wrong_examples: Vec<String>,
    /// The first failure of each kind: what failed and its message.
    error_examples: BTreeMap<String, String>,
}

impl Stats {
    /// Counts the outcome of one `get` whose value was checked with `check` (a description
    /// of the difference, if any).
    fn record<T>(
        &mut self,
        what: &str,
        got: Result<T, GetError>,
        check: impl FnOnce(T) -> Option<String>,
    ) {
        self.gets += 1;
        match got {
            Ok(v) => self.check(what, check(v)),
            Err(e) => self.fail(what, &kind(&e), &e.to_string()),
        }
    }

    /// Counts a checked value: `diff` describes how it is wrong, `None` if right.
    fn check(&mut self, what: &str, diff: Option<String>) {
        self.checked += 1;
        match diff {
            None => self.ok += 1,
            Some(d) => {
                self.wrong += 1;
                eprintln!("WRONG {what}: {d}");
                if self.wrong_examples.len() < 10 {
                    self.wrong_examples.push(format!("{what}: {d}"));
                }
            }
        }
    }

    /// Counts a failure of kind `kind` (a hang if it is [`HANG`]).
    fn fail(&mut self, what: &str, kind: &str, message: &str) {
        eprintln!("{what} failed ({kind}): {message}");
        if kind == HANG {
            self.hangs += 1;
        } else {
            *self.errors.entry(kind.to_string()).or_default() += 1;
            self.error_examples
                .entry(kind.to_string())
                .or_insert_with(|| format!("{what}: {message}"));
        }
    }
}

/// `Some(description)` unless `got == want`.
fn differs<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Option<String> {
    (got != want).then(|| format!("got {got:?}, expected {want:?}"))
}

/// One piece of work in flight.
enum Work {
    /// A task's large result, and a task that took it as its argument.
    Chain {
        seed: u64,
        len: u64,
        block: ObjectRef<Bytes>,
        digest: ObjectRef<u64>,
        read_block: bool,
    },
    /// A large object put by the driver, a task and an actor call that took it.
    Put {
        seed: u64,
        len: u64,
        put: ObjectRef<Bytes>,
        digest: ObjectRef<u64>,
        actor_digest: Option<(u64, ObjectRef<u64>)>,
    },
    /// A nested task.
    Nested {
        seed: u64,
        fanout: u64,
        len: u64,
        result: ObjectRef<Result<u64, String>>,
    },
    /// A call to a named actor of tag `tag`.
    Actor {
        tag: u64,
        x: u64,
        result: ObjectRef<u64>,
    },
    /// A small task.
    Small {
        a: u64,
        b: u64,
        result: ObjectRef<u64>,
    },
}

/// A small xorshift generator: the workload is the same for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Args {
    seconds: u64,
    bound: Duration,
    seed: u64,
    driver: u64,
    drivers: u64,
    run: String,
    window: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 60,
        bound: Duration::from_secs(120),
        seed: 1,
        driver: 0,
        drivers: 1,
        run: format!("chaos-{}", std::process::id()),
        window: 12,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<String> {
            it.next().with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--bound" => args.bound = Duration::from_secs(value()?.parse()?),
            "--seed" => args.seed = value()?.parse()?,
            "--driver" => args.driver = value()?.parse()?,
            "--drivers" => args.drivers = value()?.parse()?,
            "--run" => args.run = value()?,
            "--window" => args.window = value()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(
        args.drivers > 0 && args.driver < args.drivers,
        "--driver must be below --drivers"
    );
    Ok(args)
}

/// The name of driver `d`'s named actor, generation `g`.
fn actor_name(run: &str, d: u64, g: u64) -> String {
    format!("{run}-mixer-d{d}-g{g}")
}

/// The tag of driver `d`'s actor, generation `g`.
fn actor_tag(seed: u64, d: u64, g: u64) -> u64 {
    mix64(seed ^ (d << 32) ^ g)
}

/// The driver: its named actor and what it counts.
struct Driver {
    args: Args,
    rng: Rng,
    stats: Stats,
    /// Its named actor, its tag, its generation, and failed calls in a row.
    mixer: ActorHandle<Mixer>,
    tag: u64,
    generation: u64,
    failures_in_a_row: u64,
}

impl Driver {
    fn bound_ms(&self) -> u64 {
        self.args.bound.as_millis() as u64
    }

    /// Makes named actor generation `g` of this driver.
    fn create_mixer(args: &Args, g: u64) -> anyhow::Result<ActorHandle<Mixer>> {
        let name = actor_name(&args.run, args.driver, g);
        Mixer::options(ActorOptions::new().name(&name).max_restarts(1000))
            .try_remote(actor_tag(args.seed, args.driver, g))
            .with_context(|| format!("creating actor {name}"))
    }

    /// Submits one piece of work of a random kind.
    fn submit(&mut self) -> anyhow::Result<Work> {
        let seed = self.rng.next();
        let len = (1 + self.rng.below(4)) * MIB - self.rng.below(4096);
        Ok(match self.rng.below(10) {
            0..=2 => {
                let block = make_block.remote(seed, len);
                let digest = digest_block.remote(&block);
                self.stats.tasks_submitted += 2;
                Work::Chain {
                    seed,
                    len,
                    block,
                    digest,
                    read_block: self.rng.below(2) == 0,
                }
            }
            3..=4 => {
                doing("put");
                let put = match shoal::put(&Bytes(pattern(seed, len))) {
                    Ok(r) => r,
                    Err(e) => {
                        let k = format!("{e:?}");
                        let k: String = k
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric())
                            .collect();
                        self.stats.fail("put", &format!("Put:{k}"), &e.to_string());
                        return self.submit_small();
                    }
                };
                self.stats.puts += 1;
                self.stats.put_bytes += len;
                let digest = digest_block.remote(&put);
                self.stats.tasks_submitted += 1;
                let actor_digest = (self.rng.below(3) == 0).then(|| {
                    self.stats.actor_calls += 1;
                    (self.tag, self.mixer.digest(&put))
                });
                Work::Put {
                    seed,
                    len,
                    put,
                    digest,
                    actor_digest,
                }
            }
            5..=6 => {
                let fanout = 1 + self.rng.below(3);
                let len = MIB + self.rng.below(MIB);
                let result = nested.remote(seed, fanout, len, self.bound_ms() / 2);
                self.stats.tasks_submitted += 1;
                self.stats.nested_tasks += 1;
                Work::Nested {
                    seed,
                    fanout,
                    len,
                    result,
                }
            }
            7..=8 => {
                self.stats.actor_calls += 1;
                Work::Actor {
                    tag: self.tag,
                    x: seed,
                    result: self.mixer.mix(seed),
                }
            }
            _ => return self.submit_small(),
        })
    }

    fn submit_small(&mut self) -> anyhow::Result<Work> {
        let (a, b) = (self.rng.next(), self.rng.next());
        self.stats.tasks_submitted += 1;
        Ok(Work::Small {
            a,
            b,
            result: add.remote(a, b),
        })
    }

    /// Waits for one piece of work (each reference until `submitted + bound`) and checks it.
    fn finish(&mut self, work: Work, submitted: Instant) {
        let deadline = submitted + self.args.bound;
        let s = &mut self.stats;
        match work {
            Work::Chain {
                seed,
                len,
                block,
                digest: d,
                read_block,
            } => {
                let want = digest(&pattern(seed, len));
                doing("get chain digest");
                s.record("chain digest", get_by(&d, deadline), |v| differs(v, want));
                if read_block {
                    doing("get chain block");
                    s.record("chain block", get_by(&block, deadline), |v| {
                        (digest(&v.0) != want)
                            .then(|| format!("block of {} bytes differs", v.0.len()))
                    });
                }
            }
            Work::Put {
                seed,
                len,
                put,
                digest: d,
                actor_digest,
            } => {
                let want = digest(&pattern(seed, len));
                doing("get put digest");
                s.record("put digest", get_by(&d, deadline), |v| differs(v, want));
                doing("get put read back");
                s.record("put read back", get_by(&put, deadline), |v| {
                    (digest(&v.0) != want).then(|| format!("object of {} bytes differs", v.0.len()))
                });
                if let Some((tag, r)) = actor_digest {
                    doing("get actor digest");
                    let got = get_by(&r, deadline);
                    let failed = got.is_err();
                    s.record("actor digest", got, |v| differs(v, mix64(want ^ tag)));
                    self.actor_outcome(failed);
                }
            }
            Work::Nested {
                seed,
                fanout,
                len,
                result,
            } => {
                let want = nested_expected(seed, fanout, len);
                doing("get nested");
                match get_by(&result, deadline) {
                    Ok(Ok(v)) => {
                        s.gets += 1;
                        s.check("nested", differs(v, want));
                    }
                    Ok(Err(k)) => {
                        s.gets += 1;
                        s.fail("nested (inside)", &k, "a task of a nested task failed");
                    }
                    Err(e) => s.record::<u64>("nested", Err(e), |_| None),
                }
            }
            Work::Actor { tag, x, result } => {
                doing("get actor mix");
                let got = get_by(&result, deadline);
                let failed = got.is_err();
                s.record("actor mix", got, |v| differs(v, mix64(x ^ tag)));
                self.actor_outcome(failed);
            }
            Work::Small { a, b, result } => {
                doing("get small");
                s.record("small", get_by(&result, deadline), |v| {
                    differs(v, a.wrapping_add(b))
                });
            }
        }
    }

    /// After a call to this driver's actor: five failures in a row, and the actor is taken
    /// for dead for good (its restarts spent, or its host lost with it) and made again under
    /// a new name.
    fn actor_outcome(&mut self, failed: bool) {
        if !failed {
            self.failures_in_a_row = 0;
            return;
        }
        self.failures_in_a_row += 1;
        if self.failures_in_a_row < 5 {
            return;
        }
        self.failures_in_a_row = 0;
        let g = self.generation + 1;
        doing("create mixer");
        match Self::create_mixer(&self.args, g) {
            Ok(m) => {
                eprintln!("made actor generation {g}");
                self.mixer = m;
                self.generation = g;
                self.tag = actor_tag(self.args.seed, self.args.driver, g);
                self.stats.actors_created += 1;
            }
            Err(e) => self
                .stats
                .fail("actor creation", "ActorCreation", &format!("{e:#}")),
        }
    }

    /// Looks the next driver's named actor up (retrying NotFound for up to 10 s: the name
    /// reaches the mesh's directory a moment after the actor is up) and calls it.
    fn call_neighbour(&mut self) {
        if self.args.drivers < 2 {
            return;
        }
        let d = (self.args.driver + 1) % self.args.drivers;
        self.stats.lookups += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Its newest generation is not known here: the first few are tried.
        doing("look up neighbour");
        let names: Vec<(u64, String)> = (0..4)
            .map(|g| (g, actor_name(&self.args.run, d, g)))
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // In a thread of its own: a lookup has no bound of its own in the SDK.
        let spawned = std::thread::Builder::new()
            .name("lookup".into())
            .spawn(move || {
                let found = loop {
                    let hit = names.iter().find_map(|(g, name)| {
                        shoal::get_actor::<Mixer>(name).ok().map(|h| (*g, h))
                    });
                    if hit.is_some() || Instant::now() >= deadline {
                        break hit;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                // The driver may have given up on this lookup: then nobody listens.
                tx.send(found).ok();
            });
        if let Err(e) = spawned {
            self.stats.fail("lookup", "LookupThread", &e.to_string());
            return;
        }
        let found = match rx.recv_timeout(LOOKUP_BOUND) {
            Ok(found) => found,
            Err(_) => {
                eprintln!("lookup of driver {d}'s actor unanswered after {LOOKUP_BOUND:?}");
                self.stats.lookup_hangs += 1;
                return;
            }
        };
        let Some((g, handle)) = found else {
            *self
                .stats
                .errors
                .entry("Lookup:NotFound".into())
                .or_default() += 1;
            return;
        };
        self.stats.lookups_found += 1;
        self.stats.actor_calls += 1;
        let x = self.rng.next();
        let tag = actor_tag(self.args.seed, d, g);
        doing("get neighbour mix");
        let got = get_by(&handle.mix(x), Instant::now() + self.args.bound);
        self.stats
            .record("neighbour actor", got, |v| differs(v, mix64(x ^ tag)));
    }

    /// A parameter-server round: a fresh server (no restarts: its state is the point), two
    /// workers of `iters` updates each (no retries: a retried worker would apply its updates
    /// twice). Every read must show each parameter equal to the number of updates applied;
    /// if every worker succeeded, that number must be `2 * iters`.
    fn ps_round(&mut self) {
        let dim = 8;
        let iters = 5 + self.rng.below(10) as u32;
        doing("create parameter server");
        let server = ParamServer::remote(dim);
        self.stats.ps_rounds += 1;
        let workers: Vec<ObjectRef<Result<u32, String>>> = (0..2)
            .map(|_| {
                ps_worker.options(TaskOptions::new().max_retries(0)).remote(
                    server.clone(),
                    iters,
                    self.bound_ms() / 2,
                )
            })
            .collect();
        self.stats.tasks_submitted += 2;
        let started = Instant::now();
        let mut all_ok = true;
        for w in &workers {
            self.stats.gets += 1;
            doing("get ps worker");
            match get_by(w, started + self.args.bound) {
                Ok(Ok(n)) => self.stats.check("ps worker", differs(n, iters)),
                Ok(Err(k)) => {
                    all_ok = false;
                    self.stats
                        .fail("ps worker (inside)", &k, "a parameter-server call failed");
                }
                Err(e) => {
                    all_ok = false;
                    self.stats.fail("ps worker", &kind(&e), &e.to_string());
                }
            }
        }
        self.stats.actor_calls += 1;
        doing("get ps state");
        let state = get_by(&server.state(), Instant::now() + self.args.bound);
        self.stats.record("ps state", state, |(params, updates)| {
            if params.len() != dim || params.iter().any(|p| *p != updates as f64) {
                return Some(format!("params {params:?} after {updates} updates"));
            }
            if all_ok && updates != 2 * u64::from(iters) {
                return Some(format!("{updates} updates applied, expected {}", 2 * iters));
            }
            None
        });
        if all_ok {
            self.stats.ps_rounds_complete += 1;
        }
        doing("kill parameter server");
        shoal::kill(&server);
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    watchdog()?;
    shoal::init_with(InitOptions {
        require_daemon: true,
        ..Default::default()
    })
    .context("attaching to the node on $SHOAL_SOCKET")?;
    let mixer = Driver::create_mixer(&args, 0)?;
    let mut driver = Driver {
        rng: Rng(mix64(args.seed ^ (args.driver + 1)).max(1)),
        stats: Stats {
            driver: args.driver,
            actors_created: 1,
            ..Default::default()
        },
        tag: actor_tag(args.seed, args.driver, 0),
        generation: 0,
        failures_in_a_row: 0,
        mixer,
        args,
    };
    let start = Instant::now();
    let run_for = Duration::from_secs(driver.args.seconds);
    let mut inflight: VecDeque<(Work, Instant)> = VecDeque::new();
    let mut next_ps = Instant::now() + Duration::from_secs(5);
    let mut next_lookup = Instant::now() + Duration::from_secs(8);
    while start.elapsed() < run_for || !inflight.is_empty() {
        if start.elapsed() < run_for {
            while inflight.len() < driver.args.window {
                doing("submit");
                let work = driver.submit()?;
                inflight.push_back((work, Instant::now()));
            }
            if Instant::now() >= next_ps {
                driver.ps_round();
                next_ps = Instant::now() + Duration::from_secs(10);
            }
            if Instant::now() >= next_lookup {
                driver.call_neighbour();
                next_lookup = Instant::now() + Duration::from_secs(15);
            }
        }
        if let Some((work, submitted)) = inflight.pop_front() {
            driver.finish(work, submitted);
        }
    }
    doing("print");
    driver.stats.seconds = run_for.as_secs_f64();
    println!("{}", serde_json::to_string(&driver.stats)?);
    doing("shutdown");
    shoal::shutdown();
    Ok(())
}
