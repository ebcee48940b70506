//! Per-call options of a task: [`TaskOptions`].

use shoal_protocol::{LabelMatch, ResourceSet, Strategy};

/// Options of one call: what the task holds while it runs, and how often it is retried
/// when its worker dies.
///
/// ```no_run
/// # #[shoal::remote] fn render(frame: u32) -> Vec<u8> { vec![frame as u8] }
/// use shoal::TaskOptions;
/// // Each frame holds 2 CPUs, and is not run again if its worker dies.
/// let render_big = render.options(TaskOptions::new().num_cpus(2.0).max_retries(0));
/// let frames: Vec<_> = (0..10).map(|i| render_big.remote(i)).collect();
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOptions {
    pub(crate) resources: ResourceSet,
    pub(crate) max_retries: u32,
    pub(crate) wait_for_resources: bool,
    pub(crate) retry_exceptions: bool,
    pub(crate) placement: Placement,
    /// A streaming generator's window (see [`TaskOptions::backpressure`]).
    pub(crate) backpressure: u32,
    /// Environment variables of its worker, sorted by name (see [`TaskOptions::env`]).
    pub(crate) env: Vec<(String, String)>,
}

/// Sets `name` to `value` in `env`, kept sorted by name (a name set again takes the new
/// value).
pub(crate) fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) => env[i].1 = value.to_string(),
        Err(i) => env.insert(i, (name.to_string(), value.to_string())),
    }
}

/// How many items a streaming generator runs ahead of its consumer by default.
///
/// ```
/// use shoal::{TaskOptions, DEFAULT_BACKPRESSURE};
/// assert_eq!(TaskOptions::new(), TaskOptions::new().backpressure(DEFAULT_BACKPRESSURE));
/// // A window four times the default, for a consumer that reads in large batches.
/// let options = TaskOptions::new().backpressure(4 * DEFAULT_BACKPRESSURE);
/// # let _ = options;
/// ```
pub const DEFAULT_BACKPRESSURE: u32 = 64;

/// Where a task or actor may run: a strategy and a label selector (with the first bad
/// condition of the selector, which fails the call as invalid).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Placement {
    pub(crate) strategy: Strategy,
    pub(crate) label_selector: Vec<LabelMatch>,
    pub(crate) invalid: Option<String>,
}

impl Placement {
    /// Adds the condition `expr` on label `key` (see [`TaskOptions::label`]).
    pub(crate) fn label(&mut self, key: &str, expr: &str) {
        match LabelMatch::parse(key, expr) {
            Ok(m) => self.label_selector.push(m),
            Err(e) => {
                self.invalid.get_or_insert(e);
            }
        }
    }
}

impl Default for TaskOptions {
    /// One CPU, three retries (as Ray).
    ///
    /// ```
    /// use shoal::TaskOptions;
    /// assert_eq!(TaskOptions::default(), TaskOptions::new().num_cpus(1.0).max_retries(3));
    /// ```
    fn default() -> Self {
        Self {
            resources: ResourceSet::cpus(1.0),
            max_retries: 3,
            wait_for_resources: false,
            retry_exceptions: false,
            placement: Placement::default(),
            backpressure: DEFAULT_BACKPRESSURE,
            env: Vec::new(),
        }
    }
}

/// The resource whose units are GPU devices (Ray's `num_gpus`).
pub(crate) const GPU: &str = "GPU";

impl TaskOptions {
    /// The defaults: one CPU, three retries.
    ///
    /// ```
    /// use shoal::TaskOptions;
    /// assert_eq!(TaskOptions::new(), TaskOptions::default());
    /// assert_eq!(TaskOptions::new(), TaskOptions::new().num_cpus(1.0).max_retries(3));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs the task holds: zero, a part of one CPU, or whole CPUs (as Ray's, a fraction
    /// above one is refused: its `get` gives `TaskError::InvalidOptions`).
    ///
    /// ```no_run
    /// # #[shoal::remote] fn compile(unit: String) -> usize { unit.len() }
    /// # #[shoal::remote] fn check(url: String) -> bool { url.is_empty() }
    /// use shoal::TaskOptions;
    /// let build = compile.options(TaskOptions::new().num_cpus(4.0)).remote("app".to_string());
    /// // Mostly waiting on the network: four such tasks share one CPU.
    /// let up = check.options(TaskOptions::new().num_cpus(0.25)).remote("http://a".to_string());
    /// ```
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources = self.resources.with(shoal_protocol::CPU, n);
        self
    }

    /// GPUs the task holds (Ray's `num_gpus`): whole devices, or a fraction of one (shared
    /// with other fractions). The task is given particular devices, which
    /// [`gpu_ids`](crate::gpu_ids) names and `CUDA_VISIBLE_DEVICES` lists while it runs.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn embed(texts: Vec<String>) -> usize { texts.len() }
    /// use shoal::TaskOptions;
    /// // Half a device: two such tasks run at once on one GPU.
    /// let n = embed.options(TaskOptions::new().num_gpus(0.5)).remote(vec!["a".to_string()]);
    /// ```
    pub fn num_gpus(self, n: f64) -> Self {
        self.resource(GPU, n)
    }

    /// An environment variable of the worker process the task runs in (the `env_vars` of
    /// Ray's `runtime_env`): such tasks run in workers started with these variables, kept
    /// apart from the others, here or at the peer the task runs on. A library that reads a
    /// variable once, when it loads, sees it. `SHOAL_*`, `LD_*` and `DYLD_*` are refused
    /// (`TaskError::InvalidOptions`), and so are names with `=` or NUL and values with NUL.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn solve(n: u64) -> u64 { n }
    /// use shoal::TaskOptions;
    /// // Its numeric library uses 4 threads, and logs at debug level.
    /// let options = TaskOptions::new().num_cpus(4.0).env("OMP_NUM_THREADS", "4").env("RUST_LOG", "debug");
    /// let x = solve.options(options).remote(1_000);
    /// ```
    pub fn env(mut self, name: &str, value: &str) -> Self {
        set_env(&mut self.env, name, value);
        self
    }

    /// An amount of a custom resource (`--resource NAME=N` on the node); above one, a whole
    /// number.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn infer(batch: Vec<f32>) -> Vec<f32> { batch }
    /// use shoal::TaskOptions;
    /// // Only on a peer started with `shoal node --resource GPU=…`, holding one GPU.
    /// let out = infer.options(TaskOptions::new().resource("GPU", 1.0)).remote(vec![0.5; 64]);
    /// ```
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources = self.resources.with(name, amount);
        self
    }

    /// How many times the task is run again if its worker process dies. Panics are not
    /// retried unless [`TaskOptions::retry_exceptions`] says so.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn charge(order: u64) -> bool { order > 0 }
    /// use shoal::TaskOptions;
    /// // Not safe to run twice: if its worker dies, its `get` fails with WorkerDied instead.
    /// let paid = charge.options(TaskOptions::new().max_retries(0)).remote(1234);
    /// ```
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Run the task again when its function panics or returns an `Err` too, within its
    /// [`max_retries`](TaskOptions::max_retries), as Ray's `retry_exceptions=True` (for a
    /// flaky dependency, say). The last panic is the `get`'s error; the last `Err` is its
    /// value. `#[shoal::remote(retry_if = is_transient)]` on the function narrows the errors
    /// retried to those `is_transient(&err)` accepts (Ray's list of exception classes). An
    /// `Err` larger than the node's inline threshold (64 KiB by default) is not retried.
    /// Actor methods are not retried for their errors (only for their process's death, with
    /// [`ActorOptions::max_task_retries`](crate::ActorOptions::max_task_retries)).
    ///
    /// ```no_run
    /// #[shoal::remote]
    /// fn download(url: String) -> Vec<u8> {
    ///     fetch(&url).expect("the server answered")
    /// }
    /// # fn fetch(_url: &str) -> Result<Vec<u8>, String> { Ok(Vec::new()) }
    ///
    /// use shoal::TaskOptions;
    /// // Up to 5 runs in all, whether its worker dies or it panics.
    /// let options = TaskOptions::new().max_retries(4).retry_exceptions(true);
    /// let page = download.options(options).remote("http://example.org".to_string());
    /// ```
    ///
    /// Only some errors:
    ///
    /// ```no_run
    /// #[derive(Debug, serde::Serialize, serde::Deserialize)]
    /// enum FetchError {
    ///     Timeout,
    ///     NotFound,
    /// }
    ///
    /// fn transient(e: &FetchError) -> bool {
    ///     matches!(e, FetchError::Timeout)
    /// }
    ///
    /// #[shoal::remote(retry_if = transient)]
    /// fn fetch(url: String) -> Result<Vec<u8>, FetchError> {
    ///     # let _ = url;
    ///     Err(FetchError::NotFound)
    /// }
    ///
    /// use shoal::TaskOptions;
    /// // A timeout runs it again (up to 3 retries); NotFound is its value at once.
    /// let options = TaskOptions::new().max_retries(3).retry_exceptions(true);
    /// let page = fetch.options(options).remote("http://example.org".to_string());
    /// ```
    pub fn retry_exceptions(mut self, retry: bool) -> Self {
        self.retry_exceptions = retry;
        self
    }

    /// For a `streaming` remote function: it pauses while `items` of the values it yielded
    /// were not taken from its [`ObjectRefStream`](crate::ObjectRefStream) (Ray's
    /// `_generator_backpressure_num_objects`), so that a fast producer does not fill the
    /// store ahead of a slow consumer. Default [`DEFAULT_BACKPRESSURE`]; at least 1 (0 fails
    /// the call with `TaskError::InvalidOptions`); `u32::MAX` for none.
    ///
    /// ```no_run
    /// #[shoal::remote(streaming)]
    /// fn chunks(n: u32) -> impl Iterator<Item = Vec<u8>> {
    ///     (0..n).map(|_| vec![0u8; 1 << 20])
    /// }
    ///
    /// # fn main() -> Result<(), shoal::GetError> {
    /// // At most 8 chunks (8 MiB) made and not yet taken.
    /// let stream = chunks.options(shoal::TaskOptions::new().backpressure(8)).remote(1000);
    /// for chunk in stream {
    ///     let bytes = chunk.get_blocking()?;
    /// #   let _ = bytes;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn backpressure(mut self, items: u32) -> Self {
        self.backpressure = items;
        self
    }

    /// Where the task may run (Ray's scheduling strategies): [`Strategy::Spread`] spreads
    /// tasks over the mesh, [`Strategy::on_peer`] pins one to a peer,
    /// [`Strategy::prefer_peer`] prefers one. The default runs a task where it was
    /// submitted while it fits, and at the best peer with room otherwise.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn work() -> u8 { 0 }
    /// use shoal::{Strategy, TaskOptions};
    /// let spread = work.options(TaskOptions::new().strategy(Strategy::Spread)).remote();
    /// let peer = shoal::peer_id().unwrap_or_default();
    /// let here = work.options(TaskOptions::new().strategy(Strategy::on_peer(peer))).remote();
    /// ```
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.placement.strategy = strategy;
        self
    }

    /// Runs the task only on a peer whose label `key` (`shoal node --label key=value`)
    /// matches `expr`, as Ray's label selectors: `value`, `!value` (another value, or no
    /// such label), `in(a,b)`, `!in(a,b)`. Each call adds a condition; all must hold. A
    /// malformed condition fails the task at once with `TaskError::InvalidOptions`.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn work() -> u8 { 0 }
    /// use shoal::TaskOptions;
    /// let options = TaskOptions::new().label("zone", "in(eu-1,eu-2)").label("gpu", "!none");
    /// let r = work.options(options).remote();
    /// ```
    pub fn label(mut self, key: &str, expr: &str) -> Self {
        self.placement.label(key, expr);
        self
    }

    /// If no peer of the mesh can ever meet the demand (say a resource no peer has yet),
    /// wait for one that can to join instead of failing with `Infeasible` after the grace
    /// period.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn train() -> f64 { 0.0 }
    /// use shoal::TaskOptions;
    /// // No peer has a GPU yet: wait for one to join rather than fail as infeasible.
    /// let options = TaskOptions::new().resource("GPU", 1.0).wait_for_resources(true);
    /// let loss = train.options(options).remote();
    /// ```
    pub fn wait_for_resources(mut self, wait: bool) -> Self {
        self.wait_for_resources = wait;
        self
    }
}
