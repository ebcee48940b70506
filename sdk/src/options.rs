//! Per-call options of a task: [`TaskOptions`].

use shoal_protocol::{LabelMatch, ResourceSet, Strategy};

/// Options of one call: what the task holds while it runs, and how often it is retried
/// when its worker dies.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOptions {
    pub(crate) resources: ResourceSet,
    pub(crate) max_retries: u32,
    pub(crate) wait_for_resources: bool,
    pub(crate) retry_exceptions: bool,
    pub(crate) placement: Placement,
    /// A streaming generator's window (see [`TaskOptions::backpressure`]).
    pub(crate) backpressure: u32,
}

/// How many items a streaming generator runs ahead of its consumer by default.
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
    fn default() -> Self {
        Self {
            resources: ResourceSet::cpus(1.0),
            max_retries: 3,
            wait_for_resources: false,
            retry_exceptions: false,
            placement: Placement::default(),
            backpressure: DEFAULT_BACKPRESSURE,
        }
    }
}

impl TaskOptions {
    /// The defaults: one CPU, three retries.
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs the task holds: zero, a part of one CPU, or whole CPUs (as Ray's, a fraction
    /// above one is refused: its `get` gives `TaskError::InvalidOptions`).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources = self.resources.with(shoal_protocol::CPU, n);
        self
    }

    /// An amount of a custom resource (`--resource NAME=N` on the node); above one, a whole
    /// number.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources = self.resources.with(name, amount);
        self
    }

    /// How many times the task is run again if its worker process dies. Panics are not
    /// retried unless [`TaskOptions::retry_exceptions`] says so.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Run the task again when its function panics too, within its
    /// [`max_retries`](TaskOptions::max_retries), as Ray's `retry_exceptions=True` (for a
    /// flaky dependency, say). The last panic is the `get`'s error.
    pub fn retry_exceptions(mut self, retry: bool) -> Self {
        self.retry_exceptions = retry;
        self
    }

    /// For a `streaming` remote function: it pauses while `items` of the values it yielded
    /// were not taken from its [`ObjectRefStream`](crate::ObjectRefStream) (Ray's
    /// `_generator_backpressure_num_objects`), so that a fast producer does not fill the
    /// store ahead of a slow consumer. Default [`DEFAULT_BACKPRESSURE`]; at least 1 (0 fails
    /// the call with `TaskError::InvalidOptions`); `u32::MAX` for none.
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
    pub fn wait_for_resources(mut self, wait: bool) -> Self {
        self.wait_for_resources = wait;
        self
    }
}
