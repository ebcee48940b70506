//! The fuzzing loop: inputs for a target until its budget is spent, each run under
//! `catch_unwind` and the allocation meter, a watchdog for hangs, and crash files.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::alloc;
use crate::mutate::{self, MAX_INPUT};
use crate::rng::Rng;
use crate::target::{Target, Verdict};

/// The most a decoder may hold at once for an input of `n` bytes: 64 bytes per input byte,
/// plus 4 MiB of fixed costs: serde gives a sequence being decoded up to 1 MiB of capacity
/// before its elements arrive (its "cautious" size hint, whatever the length prefix says),
/// and a message nests a few sequences (a task's arguments, each one's bytes).
pub fn alloc_bound(n: usize) -> usize {
    n.saturating_mul(64).saturating_add(4 << 20)
}

/// The seed corpus: structure-aware inputs made per target from a fixed seed, on top of the
/// hand-made ones.
pub const GENERATED_SEEDS: usize = 64;
/// The corpus grows with mutants that still decode, up to this many inputs.
const MAX_CORPUS: usize = 4096;

/// Where the fuzz crate lives in the source tree (crash files and regressions go under it).
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Regression inputs of `target`: `fuzz/regressions/<target>/*`.
pub fn regressions(target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = crate_dir().join("regressions").join(target);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    out.sort();
    Ok(out)
}

/// How long one run may take.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Wall-clock time per target.
    Time(Duration),
    /// Inputs per target.
    Iterations(u64),
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Per target.
    pub budget: Budget,
    /// The run's seed (each target's generator starts from it and the target's name).
    pub seed: u64,
    /// Where crash inputs are written.
    pub crash_dir: PathBuf,
    /// An input that takes longer than this is a hang.
    pub hang: Duration,
}

/// An input that broke a target.
#[derive(Clone, Debug)]
pub struct Crash {
    /// What happened: the panic message, or the allocation.
    pub reason: String,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was saved, if it was.
    pub file: Option<PathBuf>,
}

/// What a target's run did.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Inputs run.
    pub iterations: u64,
    /// Of which accepted by the decoder.
    pub accepted: u64,
    /// Time spent.
    pub elapsed: Duration,
    /// Inputs in the corpus at the end.
    pub corpus: usize,
    /// The largest peak allocation seen, and the input length it was for.
    pub peak_alloc: (usize, usize),
    /// The first crash, which ended the run.
    pub crash: Option<Crash>,
}

thread_local! {
    /// Whether this thread's panics are recorded in silence (fuzzing) or printed (replay).
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The last panic's message and place, while quiet.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                return default(info);
            }
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            LAST_PANIC.set(Some(format!("panicked{at}: {msg}")));
        }));
    });
}

/// Runs one input through `target`: its verdict, or why it is a crash (a panic, or more
/// allocated than [`alloc_bound`]). With `quiet` off, a panic is printed as usual.
pub fn run_one(target: &Target, input: &[u8], quiet: bool) -> Result<Verdict, String> {
    run_measured(target, input, quiet).0
}

fn run_measured(target: &Target, input: &[u8], quiet: bool) -> (Result<Verdict, String>, usize) {
    install_panic_hook();
    alloc::set_over_cap_hook(over_cap);
    QUIET.set(quiet);
    let (result, peak) = alloc::measure(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(input)))
    });
    QUIET.set(false);
    let result = match result {
        Err(_) => Err(LAST_PANIC
            .take()
            .unwrap_or_else(|| "panicked (message printed above)".into())),
        Ok(_) if peak > alloc_bound(input.len()) => Err(format!(
            "held {peak} bytes at once for an input of {} bytes (bound {})",
            input.len(),
            alloc_bound(input.len())
        )),
        Ok(v) => Ok(v),
    };
    (result, peak)
}

/// The input being run, for the watchdog and the allocation cap's hook.
struct Current {
    target: &'static str,
    input: Vec<u8>,
    started: Instant,
    crash_dir: PathBuf,
    /// Whether an input is running (between inputs nothing can hang).
    running: bool,
}

type Shared = Arc<Mutex<Current>>;

thread_local! {
    /// The input this thread is fuzzing with, if it is (for the allocation cap's hook).
    static ACTIVE: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Saves the running input as a crash and ends the process (a hang or a runaway allocation:
/// nothing to unwind from).
fn die_with(current: Option<&Shared>, reason: &str) -> ! {
    // try_lock: the fuzzing thread never holds the lock while an input runs; if something
    // else does, report without the input rather than wait.
    let saved = current.and_then(|c| {
        c.try_lock()
            .ok()
            .map(|c| (c.target, c.input.clone(), c.crash_dir.clone()))
    });
    match saved {
        Some((target, input, dir)) => {
            let crash = Crash {
                reason: reason.to_string(),
                input,
                file: None,
            };
            report_crash(target, &save(target, crash, &dir));
        }
        None => eprintln!("shoal-fuzz: {reason} (the input could not be saved)"),
    }
    std::process::exit(2);
}

fn over_cap(size: usize) {
    // Where the request came from (nothing unwinds from here): with RUST_BACKTRACE set.
    let trace = std::backtrace::Backtrace::capture();
    if trace.status() == std::backtrace::BacktraceStatus::Captured {
        eprintln!("shoal-fuzz: a request for {size} bytes, from:\n{trace}");
    }
    let current = ACTIVE.try_with(|a| a.borrow().clone()).ok().flatten();
    die_with(
        current.as_ref(),
        &format!(
            "asked for {size} bytes, past the cap of {} bytes held at once",
            alloc::HARD_CAP
        ),
    );
}

/// Watches the running input; the watch ends when the guard is dropped.
fn watchdog(current: Shared, hang: Duration) -> Watchdog {
    let (stop, stopped) = mpsc::sync_channel::<()>(1);
    let thread = std::thread::spawn(move || loop {
        match stopped.recv_timeout(Duration::from_millis(100)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let late = {
                    let c = current.lock().unwrap_or_else(|e| e.into_inner());
                    c.running && c.started.elapsed() > hang
                };
                if late {
                    die_with(Some(&current), &format!("hung: no verdict after {hang:?}"));
                }
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    });
    Watchdog {
        stop: Some(stop),
        thread: Some(thread),
    }
}

struct Watchdog {
    stop: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel, which ends the thread.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("shoal-fuzz: the watchdog thread panicked");
            }
        }
        ACTIVE.set(None);
    }
}

/// Fuzzes `target` until the budget is spent or it crashes. `extra` inputs (regressions)
/// join the seed corpus.
pub fn fuzz(target: &Target, opts: &Options, extra: Vec<Vec<u8>>) -> Stats {
    let current: Shared = Arc::new(Mutex::new(Current {
        target: target.name,
        input: Vec::new(),
        started: Instant::now(),
        crash_dir: opts.crash_dir.clone(),
        running: false,
    }));
    ACTIVE.set(Some(current.clone()));
    let _watch = watchdog(current.clone(), opts.hang);
    let started = Instant::now();
    let name_seed = Rng::from_bytes(target.name.as_bytes()).next_u64();
    let mut rng = Rng::new(opts.seed ^ name_seed);
    let mut corpus = target.corpus(GENERATED_SEEDS);
    corpus.extend(extra);
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut stats = Stats {
        iterations: 0,
        accepted: 0,
        elapsed: Duration::ZERO,
        corpus: 0,
        peak_alloc: (0, 0),
        crash: None,
    };
    // The corpus goes first, unchanged: a seed that crashes is found at once.
    let mut next_seed = 0;
    loop {
        let done = match opts.budget {
            Budget::Time(t) => stats.iterations.is_multiple_of(64) && started.elapsed() >= t,
            Budget::Iterations(n) => stats.iterations >= n,
        };
        if done {
            break;
        }
        let (input, fresh) = if next_seed < corpus.len() {
            next_seed += 1;
            (corpus[next_seed - 1].clone(), false)
        } else {
            next_input(target, &mut rng, &corpus)
        };
        {
            let mut c = current.lock().unwrap_or_else(|e| e.into_inner());
            c.input.clear();
            c.input.extend_from_slice(&input);
            c.started = Instant::now();
            c.running = true;
        }
        let (result, peak) = run_measured(target, &input, true);
        current.lock().unwrap_or_else(|e| e.into_inner()).running = false;
        stats.iterations += 1;
        if peak > stats.peak_alloc.0 {
            stats.peak_alloc = (peak, input.len());
        }
        match result {
            Ok(Verdict::Accepted) => {
                stats.accepted += 1;
                if fresh && corpus.len() < MAX_CORPUS && rng.chance(1, 4) {
                    corpus.push(input);
                }
            }
            Ok(Verdict::Rejected) => {}
            Err(reason) => {
                let crash = Crash {
                    reason,
                    input,
                    file: None,
                };
                stats.crash = Some(save(target.name, crash, &opts.crash_dir));
                break;
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats.corpus = corpus.len();
    stats
}

/// The next input: random bytes, a fresh structure-aware one, or a mutant of the corpus.
/// The flag says whether it is new (a mutant or a generated one).
fn next_input(target: &Target, rng: &mut Rng, corpus: &[Vec<u8>]) -> (Vec<u8>, bool) {
    match rng.below(20) {
        0 => {
            let n = rng.len(MAX_INPUT);
            (rng.bytes(n), true)
        }
        1..=4 => match target.generate(rng) {
            Some(mut input) => {
                if rng.chance(1, 2) {
                    mutate::mutate(rng, &mut input, corpus);
                }
                input.truncate(MAX_INPUT);
                (input, true)
            }
            None => (mutant(rng, corpus), true),
        },
        _ => (mutant(rng, corpus), true),
    }
}

fn mutant(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = rng.pick(corpus).clone();
    mutate::mutate(rng, &mut input, corpus);
    input
}

/// Writes the crash's input to `dir/<target>-<hash>` (errors are printed: the input is also
/// shown in the report).
fn save(target: &str, mut crash: Crash, dir: &Path) -> Crash {
    let hash = blake3::hash(&crash.input).to_hex();
    let path = dir.join(format!("{target}-{}", &hash[..16]));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &crash.input)) {
        Ok(()) => crash.file = Some(path),
        Err(e) => eprintln!(
            "shoal-fuzz: cannot save the crash input to {}: {e}",
            path.display()
        ),
    }
    crash
}

/// Prints a crash and how to replay it.
pub fn report_crash(target: &str, crash: &Crash) {
    eprintln!("CRASH in {target}: {}", crash.reason);
    match &crash.file {
        Some(file) => {
            eprintln!("  input ({} bytes): {}", crash.input.len(), file.display());
            eprintln!(
                "  replay: cargo run --release -p shoal-fuzz -- --replay {} {target}",
                file.display()
            );
            eprintln!("  once fixed, keep it: move it to fuzz/regressions/{target}/");
        }
        None => {
            let shown: Vec<String> = crash
                .input
                .iter()
                .take(256)
                .map(|b| format!("{b:02x}"))
                .collect();
            eprintln!("  input ({} bytes): {}", crash.input.len(), shown.join(""));
        }
    }
}
