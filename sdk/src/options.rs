//! Per-call options of a task: [`TaskOptions`].

use shoal_protocol::ResourceSet;

/// Options of one call: what the task holds while it runs, and how often it is retried
/// when its worker dies.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOptions {
    pub(crate) resources: ResourceSet,
    pub(crate) max_retries: u32,
    pub(crate) wait_for_resources: bool,
    pub(crate) retry_exceptions: bool,
}

impl Default for TaskOptions {
    /// One CPU, three retries (as Ray).
    fn default() -> Self {
        Self {
            resources: ResourceSet::cpus(1.0),
            max_retries: 3,
            wait_for_resources: false,
            retry_exceptions: false,
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

    /// If no peer of the mesh can ever meet the demand (say a resource no peer has yet),
    /// wait for one that can to join instead of failing with `Infeasible` after the grace
    /// period.
    pub fn wait_for_resources(mut self, wait: bool) -> Self {
        self.wait_for_resources = wait;
        self
    }
}
