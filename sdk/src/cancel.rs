//! Cancelling tasks: [`cancel`], [`cancel_with`] and [`is_cancelled`] (Ray's `ray.cancel`).

use shoal_protocol::ToNode;

use crate::error::CancelError;
use crate::object_ref::ObjectRef;
use crate::runtime;

/// How [`cancel_with`] cancels. The defaults are Ray's: not forced, recursive.
///
/// ```
/// use shoal::CancelOptions;
/// assert_eq!(CancelOptions::new(), CancelOptions::new().force(false).recursive(true));
/// // End the worker at once, and leave the tasks it submitted running.
/// let options = CancelOptions::new().force(true).recursive(false);
/// assert_ne!(options, CancelOptions::default());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelOptions {
    force: bool,
    recursive: bool,
}

impl Default for CancelOptions {
    fn default() -> Self {
        Self {
            force: false,
            recursive: true,
        }
    }
}

impl CancelOptions {
    /// Not forced, recursive.
    ///
    /// ```
    /// use shoal::CancelOptions;
    /// assert_eq!(CancelOptions::new(), CancelOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// End the worker process running the task at once (not for actor calls). Its other
    /// tasks queued there run again elsewhere. Without it, a blocking task runs on until it
    /// returns or sees [`is_cancelled`].
    ///
    /// ```no_run
    /// #[shoal::remote]
    /// fn solve(seed: u64) -> u64 {
    ///     // A long computation that never checks shoal::is_cancelled().
    ///     (0..u64::MAX).find(|x| x.wrapping_mul(seed) == 1).unwrap_or(0)
    /// }
    ///
    /// # fn main() -> Result<(), shoal::CancelError> {
    /// let r = solve.remote(7);
    /// shoal::cancel_with(&r, shoal::CancelOptions::new().force(true))?; // frees its CPU now
    /// # Ok(()) }
    /// ```
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Also cancel the tasks the task submitted (and theirs). Default: yes.
    ///
    /// ```no_run
    /// # #[shoal::remote] async fn crawl(url: String) -> usize { url.len() }
    /// # fn main() -> Result<(), shoal::CancelError> {
    /// let r = crawl.remote("http://example.org".to_string());
    /// // Stop the crawl, but let the page fetches it started finish.
    /// shoal::cancel_with(&r, shoal::CancelOptions::new().recursive(false))?;
    /// # Ok(()) }
    /// ```
    pub fn recursive(mut self, recursive: bool) -> Self {
        self.recursive = recursive;
        self
    }
}

/// Cancels the task whose result `r` is, as Ray's `ray.cancel(ref)`: not forced, and the tasks
/// it submitted too. A `get` of `r` then fails with
/// [`TaskError::Cancelled`](crate::TaskError::Cancelled), unless the task finished first.
///
/// Where the task is decides what happens:
/// - **not started** (waiting for arguments or resources, queued on a peer, or an actor call
///   waiting its turn): it never runs;
/// - **running, `async`**: it is dropped at its next `.await`;
/// - **running, blocking**: it cannot be interrupted; its result is not awaited any more
///   (the `get` fails at once), it may stop early by checking [`is_cancelled`], and its CPU
///   stays held until it returns. [`CancelOptions::force`] ends its worker process instead;
/// - **an actor call running a blocking method**: it runs to its end and its result stands
///   (the actor's state is the method's to keep consistent); one not begun never runs, and an
///   `async` one is dropped at its next `.await`.
///
/// Only the process that submitted the task may cancel it ([`CancelError::NotSubmitter`]);
/// a task that already finished is left alone. Returns at once: the cancel travels to
/// wherever the task is, in the mesh too.
///
/// ```no_run
/// # #[shoal::remote] async fn slow() -> u64 { tokio::time::sleep(std::time::Duration::from_secs(60)).await; 1 }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let r = slow.remote();
/// shoal::cancel(&r)?;
/// assert!(matches!(
///     r.get_blocking(),
///     Err(shoal::GetError::Task(shoal::TaskError::Cancelled { .. }))
/// ));
/// # Ok(()) }
/// ```
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<(), CancelError> {
    cancel_with(r, CancelOptions::new())
}

/// [`cancel`] with options: `force` (end the worker running it) and `recursive`.
///
/// ```no_run
/// # #[shoal::remote] fn spin() -> u64 { loop { std::hint::spin_loop() } }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let r = spin.remote();
/// shoal::cancel_with(&r, shoal::CancelOptions::new().force(true))?;
/// assert!(r.get_blocking().is_err());
/// # Ok(()) }
/// ```
pub fn cancel_with<T>(r: &ObjectRef<T>, options: CancelOptions) -> Result<(), CancelError> {
    let ctx = runtime::get();
    if ctx.is_shut_down() {
        return Err(CancelError::Shutdown);
    }
    let id = r.id();
    let Some(maker) = ctx.pending_maker(id) else {
        return if ctx.submitted(id) {
            // It ended here already: nothing to cancel.
            Ok(())
        } else {
            Err(CancelError::NotSubmitter(id))
        };
    };
    if maker.call && options.force {
        return Err(CancelError::ForceActorCall);
    }
    ctx.push(ToNode::Cancel {
        task: maker.task,
        force: options.force,
        recursive: options.recursive,
    });
    Ok(())
}

/// Whether the task or actor call running on this thread was cancelled: a long blocking
/// task can check it and return early (its result is not awaited any more). `false` outside
/// a task.
///
/// ```no_run
/// #[shoal::remote]
/// fn count_up(limit: u64) -> u64 {
///     let mut n = 0;
///     while n < limit && !shoal::is_cancelled() {
///         n += 1;
///     }
///     n
/// }
/// ```
pub fn is_cancelled() -> bool {
    let Some(task) = crate::worker::current_task() else {
        return false;
    };
    runtime::try_get().is_some_and(|ctx| ctx.work.is_interrupted(task))
}
