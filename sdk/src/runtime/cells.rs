//! The objects this process knows: one cell per object id, with the number of live
//! `ObjectRef` handles here and the value once it came (or why it will not).
//!
//! Async waits park a [`Waker`] in the cell; blocking waits sleep on one condition variable
//! that every change of any cell signals. A pending cell asks the node for its value on its
//! first poll (a `Get`), not before: a large result made on another peer stays there until
//! something here wants it. Once the connection is gone, every pending cell fails with the
//! reason, and so does every later wait; after a shutdown every cell fails, values already
//! here included.
//!
//! In a worker, a wait inside a running task tells the node the task is blocked (see
//! [`work`](super::work)), so that its CPU is lent out meanwhile.
//!
//! A blocking wait spins a little before it sleeps, while recent waits were short ([`Spin`]):
//! on a virtual machine, waking a sleeping thread on an idle CPU costs tens of microseconds,
//! as much as the rest of a small call's round trip.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::{Duration, Instant};

use shoal_protocol::{IdMap, ObjectId, ObjectValue, TaskError, ToNode};

use super::Context;
use crate::error::GetError;

/// A value this process can read: the bytes, or where they are in the store (mapped when
/// read, and unmapped after, so that the node may spill what no one is reading).
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Inline(Arc<Vec<u8>>),
    Shared(shoal_protocol::SharedObject),
}

#[derive(Debug)]
enum CellState {
    Pending,
    Ready(Value),
    Failed(GetError),
}

#[derive(Debug)]
struct Cell {
    state: CellState,
    /// Live `ObjectRef` handles in this process.
    refs: usize,
    /// A `Get` went to the node.
    requested: bool,
    wakers: Vec<Waker>,
    /// The task that makes it, when this process submitted that task.
    maker: Option<Maker>,
    /// Its failure was read by a get (or it has none yet): not reported when it is dropped.
    handled: bool,
    /// A ref to it left through another serializer: this process holds it until it ends.
    pinned: bool,
    /// The end of a streaming generator this process submitted: its items that came and
    /// were not taken yet, in order (each held here already).
    stream: Option<Box<StreamItems>>,
}

/// A stream's items that came and were not taken: each number, with its value when here.
type StreamItems = std::collections::VecDeque<(u32, Option<ObjectValue>)>;

/// What a streaming generator's stream has next.
#[derive(Debug)]
pub(crate) enum StreamNext {
    /// Item `index`, held here already, with its value when it is here.
    Item(u32, Option<ObjectValue>),
    /// The stream ended: the number of items (its end's value), or why it failed.
    End(Result<Value, GetError>),
}

/// The task that makes an object, as its submitter knows it (what `cancel` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Maker {
    /// The task.
    pub(crate) task: shoal_protocol::TaskId,
    /// It is a call of an actor.
    pub(crate) call: bool,
}

impl Cell {
    fn new(requested: bool) -> Self {
        Cell {
            state: CellState::Pending,
            refs: 0,
            requested,
            wakers: Vec::new(),
            maker: None,
            handled: false,
            pinned: false,
            stream: None,
        }
    }

    fn is_pending(&self) -> bool {
        matches!(self.state, CellState::Pending)
    }

    /// The failure of a task this process submitted that no get read (a cancel or a free
    /// is no surprise, and is not one).
    fn unhandled_failure(self) -> Option<TaskError> {
        match self.state {
            CellState::Failed(GetError::Task(e))
                if !self.handled
                    && self.maker.is_some()
                    && !matches!(
                        e,
                        TaskError::Cancelled { .. } | TaskError::ObjectFreed { .. }
                    ) =>
            {
                Some(e)
            }
            _ => None,
        }
    }
}

/// Says on stderr that a task failed and nothing read its result (as Ray's "Unhandled
/// error" lines), unless `SHOAL_IGNORE_UNHANDLED_ERRORS=1`.
fn report_unhandled(id: ObjectId, error: &TaskError) {
    if std::env::var_os(IGNORE_UNHANDLED).is_some_and(|v| v == "1") {
        return;
    }
    tracing::warn!(object = %id, %error, "unhandled error: a task failed and its result was dropped unread");
    eprintln!(
        "shoal: unhandled error (a task failed and its result {id} was dropped unread; \
         set {IGNORE_UNHANDLED}=1 to hide these): {error}"
    );
}

/// Set to `1`, failures of tasks whose results are dropped unread are not reported.
const IGNORE_UNHANDLED: &str = "SHOAL_IGNORE_UNHANDLED_ERRORS";

/// How long a blocking wait spins at most before it sleeps, unless `$SHOAL_SPIN_MICROS` says
/// otherwise (0: never).
const SPIN_LIMIT: Duration = Duration::from_micros(200);

/// Names how long a blocking wait spins at most, in microseconds (0 turns spinning off).
const SPIN_MICROS: &str = "SHOAL_SPIN_MICROS";

/// When a blocking wait spins before it sleeps: only while the waits of this process are
/// short. It keeps a moving average of how long they took (each counted as at most 8 times
/// the limit), and spins, up to the limit, while that average is within it. A run of long
/// waits (a get of a slow task) turns spinning off, so that they do not burn a CPU for
/// nothing; a run of short ones turns it on again. Never on a machine with one CPU, where
/// the spinner would only delay the thread it waits for.
#[derive(Debug)]
pub(crate) struct Spin {
    /// The longest spin; zero for none.
    limit: Duration,
    /// The moving average of recent waits, in nanoseconds.
    recent_nanos: AtomicU64,
    /// Threads that may spin at once: half the CPUs (at least one), so that spinners leave
    /// room for the threads they wait for.
    most: usize,
    /// Threads spinning now.
    spinning: AtomicUsize,
}

impl Spin {
    /// The limit from `$SHOAL_SPIN_MICROS`, else [`SPIN_LIMIT`]; none on one CPU.
    fn from_env() -> Self {
        let limit = match std::env::var(SPIN_MICROS) {
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(us) => Duration::from_micros(us),
                Err(_) => {
                    tracing::warn!(value = %v, "{SPIN_MICROS} is not a number of microseconds; \
                        using the default");
                    SPIN_LIMIT
                }
            },
            Err(_) => SPIN_LIMIT,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(if cpus > 1 { limit } else { Duration::ZERO }, cpus / 2)
    }

    fn new(limit: Duration, most: usize) -> Self {
        Self {
            limit,
            recent_nanos: AtomicU64::new(0),
            most: most.max(1),
            spinning: AtomicUsize::new(0),
        }
    }

    /// How long the next wait may spin.
    fn budget(&self) -> Duration {
        let limit = self.limit.as_nanos() as u64;
        if limit > 0 && self.recent_nanos.load(Ordering::Relaxed) <= limit {
            self.limit
        } else {
            Duration::ZERO
        }
    }

    /// A wait took `waited`.
    fn record(&self, waited: Duration) {
        let cap = 8 * self.limit.as_nanos() as u64;
        let sample = (waited.as_nanos() as u64).min(cap);
        // Racing updates may lose one sample; the average stays an average.
        let old = self.recent_nanos.load(Ordering::Relaxed);
        self.recent_nanos
            .store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }
}

impl Default for Spin {
    fn default() -> Self {
        Self::from_env()
    }
}

/// The table of cells, and the condition variable blocking waits sleep on.
#[derive(Debug, Default)]
pub(crate) struct Cells {
    table: Mutex<IdMap<ObjectId, Cell>>,
    changed: Condvar,
    /// Counts the changes of cells that blocking waits may be waiting for: a spinning wait
    /// watches it.
    changes: AtomicU64,
    spin: Spin,
}

impl Cells {
    fn lock(&self) -> MutexGuard<'_, IdMap<ObjectId, Cell>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the blocking waits: those asleep, and those spinning.
    fn wake_blocked(&self) {
        self.changes.fetch_add(1, Ordering::Release);
        self.changed.notify_all();
    }

    /// The count of changes, to give [`Cells::spin_until`] (read before the cells are).
    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Spins until a cell changes after `seen` (a count from [`Cells::changes`]) or `until`,
    /// unless as many threads as may spin do already; whether it spun.
    fn spin_until(&self, seen: u64, until: Instant) -> bool {
        let spinning = &self.spin.spinning;
        if spinning.fetch_add(1, Ordering::Relaxed) >= self.spin.most {
            spinning.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.spin_loop(seen, until);
        spinning.fetch_sub(1, Ordering::Relaxed);
        true
    }

    fn spin_loop(&self, seen: u64, until: Instant) {
        loop {
            for _ in 0..64 {
                if self.changes.load(Ordering::Acquire) != seen {
                    return;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// Sets `id`'s outcome (if the cell still exists) and wakes its waiters.
    fn settle(&self, id: ObjectId, state: CellState) {
        let wakers = {
            let mut cells = self.lock();
            let Some(cell) = cells.get_mut(&id) else {
                return;
            };
            cell.state = state;
            std::mem::take(&mut cell.wakers)
        };
        self.wake_blocked();
        for w in wakers {
            w.wake();
        }
    }

    /// Fails every pending cell with `err` (every cell, values too, if `all`) and wakes
    /// every waiter.
    pub(super) fn fail(&self, err: &GetError, all: bool) {
        let mut wakers = Vec::new();
        {
            let mut cells = self.lock();
            for cell in cells.values_mut() {
                if all || cell.is_pending() {
                    cell.state = CellState::Failed(err.clone());
                    wakers.append(&mut cell.wakers);
                }
            }
        }
        self.wake_blocked();
        for w in wakers {
            w.wake();
        }
    }
}

impl Context {
    /// A value (or a task's failure) from the node.
    pub(super) fn resolve(&self, id: ObjectId, value: ObjectValue) {
        let state = match value {
            ObjectValue::Inline(v) => CellState::Ready(Value::Inline(Arc::new(v))),
            ObjectValue::Shared(obj) => CellState::Ready(Value::Shared(obj)),
            ObjectValue::Error(e) => CellState::Failed(GetError::Task(e)),
        };
        self.cells.settle(id, state);
    }

    /// `id` fails with `err` from now on, its value here (if any) dropped.
    pub(crate) fn settle_failed(&self, id: ObjectId, err: GetError) {
        self.cells.settle(id, CellState::Failed(err));
    }

    /// Registers a new handle to `id`; `ready` is set if the cell is pending. Returns whether
    /// this is the only handle.
    pub(crate) fn add_ref(&self, id: ObjectId, ready: Option<Value>) -> bool {
        let mut cells = self.cells.lock();
        let cell = cells.entry(id).or_insert_with(|| Cell::new(false));
        cell.refs += 1;
        if let Some(v) = ready {
            if cell.is_pending() {
                cell.state = CellState::Ready(v);
            }
        }
        cell.refs == 1
    }

    /// Registers the handle to the result of a task this process submits: the node sends a
    /// small result unasked; a large one made on another peer stays there until a `get` or
    /// `wait` here asks for it (the first poll of a pending cell does).
    pub(crate) fn add_owned_result(&self, id: ObjectId, maker: Maker) {
        let mut cell = Cell::new(false);
        cell.refs = 1;
        cell.maker = Some(maker);
        self.cells.lock().insert(id, cell);
    }

    /// Registers the end of a streaming generator this process submits (`id`, its first
    /// return), whose cell also keeps the items that come until they are taken.
    pub(crate) fn add_stream(&self, id: ObjectId, maker: Maker) {
        let mut cell = Cell::new(false);
        cell.refs = 1;
        cell.maker = Some(maker);
        cell.stream = Some(Box::default());
        self.cells.lock().insert(id, cell);
    }

    /// Item `index` of the streaming generator `task` came (held by this process): kept for
    /// its stream, or released if the stream is gone.
    pub(super) fn stream_item(
        &self,
        task: shoal_protocol::TaskId,
        index: u32,
        value: Option<Box<ObjectValue>>,
    ) {
        let value = value.map(|v| *v);
        let end = ObjectId::for_return(task, 0);
        let wakers = {
            let mut cells = self.cells.lock();
            match cells
                .get_mut(&end)
                .and_then(|c| c.stream.as_mut().map(|q| (q, &mut c.wakers)))
            {
                Some((queue, wakers)) => {
                    queue.push_back((index, value));
                    Some(std::mem::take(wakers))
                }
                None => None,
            }
        };
        match wakers {
            Some(wakers) => {
                self.cells.wake_blocked();
                for w in wakers {
                    w.wake();
                }
            }
            None => {
                // Its stream was dropped: nothing will take it.
                let id = ObjectId::for_return(task, index);
                self.push(ToNode::Release { ids: vec![id] });
            }
        }
    }

    /// The next of the stream whose end is `end`: an item that came, the end, or pending
    /// (registering `waker`).
    pub(crate) fn poll_stream(&self, end: ObjectId, waker: Option<&Waker>) -> Poll<StreamNext> {
        let mut cells = self.cells.lock();
        let Some(cell) = cells.get_mut(&end) else {
            let lost = GetError::Task(TaskError::ObjectLost { id: end });
            return Poll::Ready(StreamNext::End(Err(lost)));
        };
        if let Some(item) = cell.stream.as_mut().and_then(|q| q.pop_front()) {
            return Poll::Ready(StreamNext::Item(item.0, item.1));
        }
        drop(cells);
        match self.poll_cell(end, waker, false) {
            Poll::Ready(r) => Poll::Ready(StreamNext::End(r)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`Self::poll_stream`], blocking this thread until there is a next.
    pub(crate) fn next_blocking(&self, end: ObjectId) -> StreamNext {
        let mut blocked = false;
        let mut spin = self.start_spin(None);
        let next = loop {
            let seen = self.cells.changes();
            if let Poll::Ready(next) = self.poll_stream(end, None) {
                break next;
            }
            if spin.go(&self.cells, seen) {
                continue;
            }
            if !blocked {
                blocked = self.report_blocked();
            }
            let cells = self.cells.lock();
            let moved = cells.get(&end).is_none_or(|c| {
                !c.is_pending() || c.stream.as_ref().is_some_and(|q| !q.is_empty())
            });
            if moved {
                continue;
            }
            // Woken by any change (or spuriously): the next turn looks again.
            drop(
                self.cells
                    .changed
                    .wait(cells)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        };
        spin.end(&self.cells);
        if blocked {
            self.report_unblocked();
        }
        next
    }

    /// The task that makes `id`, if this process submitted it and it has not ended here.
    pub(crate) fn pending_maker(&self, id: ObjectId) -> Option<Maker> {
        let cells = self.cells.lock();
        let cell = cells.get(&id)?;
        if cell.is_pending() {
            cell.maker
        } else {
            None
        }
    }

    /// Whether this process submitted the task that makes `id`.
    pub(crate) fn submitted(&self, id: ObjectId) -> bool {
        self.cells
            .lock()
            .get(&id)
            .is_some_and(|c| c.maker.is_some())
    }

    /// The error of `id` if it has failed in this process already.
    pub(crate) fn failed_already(&self, id: ObjectId) -> Option<GetError> {
        match &self.cells.lock().get(&id)?.state {
            CellState::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Registers a handle that failed before it existed (encoding errors and the like).
    pub(crate) fn add_failed(&self, id: ObjectId, err: GetError) {
        let mut cells = self.cells.lock();
        let cell = cells.entry(id).or_insert_with(|| Cell::new(true));
        cell.refs += 1;
        cell.state = CellState::Failed(err);
    }

    /// A ref to `id` left this process through a serializer other than the SDK's (say,
    /// written as JSON): nothing tracks where it went, so this process holds the object until
    /// it ends, as Ray pins refs serialized out of band.
    pub(crate) fn pin(&self, id: ObjectId) {
        let mut cells = self.cells.lock();
        if let Some(cell) = cells.get_mut(&id) {
            if !cell.pinned {
                cell.pinned = true;
                // A handle never dropped: the last drop of the others is not the last.
                cell.refs += 1;
                tracing::debug!(object = %id, "a ref left through another serializer; pinned while this process lives");
            }
        }
    }

    /// A failure of `id` dropped unread is no surprise, and is not reported (an actor's
    /// creation, held by its handles: its calls say why it failed).
    pub(crate) fn set_handled(&self, id: ObjectId) {
        if let Some(cell) = self.cells.lock().get_mut(&id) {
            cell.handled = true;
        }
    }

    /// Drops a handle; the last one releases this process's hold on the object.
    pub(crate) fn drop_ref(&self, id: ObjectId) {
        let (last, unhandled, items) = {
            let mut cells = self.cells.lock();
            match cells.get_mut(&id) {
                Some(cell) => {
                    cell.refs -= 1;
                    if cell.refs == 0 {
                        let mut cell = cells.remove(&id);
                        let items = cell
                            .as_mut()
                            .and_then(|c| Some((c.maker?.task, c.stream.take()?)));
                        (true, cell.and_then(Cell::unhandled_failure), items)
                    } else {
                        (false, None, None)
                    }
                }
                None => (false, None, None),
            }
        };
        if let Some(error) = unhandled {
            report_unhandled(id, &error);
        }
        // Every process that holds refs is counted at the node (the creator by its put or
        // submit, the others by `Hold`): the last handle here releases this process's hold,
        // and a stream's end its items not taken.
        if last && self.closed().is_none() {
            let mut ids = vec![id];
            if let Some((task, items)) = items {
                ids.extend(items.iter().map(|(i, _)| ObjectId::for_return(task, *i)));
            }
            self.push(ToNode::Release { ids });
        }
    }

    /// Ready, failed, or pending (registering `waker`, asking the node if needed). A get
    /// (`read`) that finds a failure handles it: it is not reported when dropped.
    pub(crate) fn poll_cell(
        &self,
        id: ObjectId,
        waker: Option<&Waker>,
        read: bool,
    ) -> Poll<Result<Value, GetError>> {
        let mut cells = self.cells.lock();
        let Some(cell) = cells.get_mut(&id) else {
            return Poll::Ready(Err(GetError::Task(TaskError::ObjectLost { id })));
        };
        match &cell.state {
            CellState::Ready(v) => Poll::Ready(Ok(v.clone())),
            CellState::Failed(e) => {
                cell.handled |= read;
                Poll::Ready(Err(e.clone()))
            }
            CellState::Pending => {
                if let Some(err) = self.closed() {
                    cell.state = CellState::Failed(err.clone());
                    return Poll::Ready(Err(err));
                }
                if let Some(w) = waker {
                    if !cell.wakers.iter().any(|x| x.will_wake(w)) {
                        cell.wakers.push(w.clone());
                    }
                }
                let ask = !cell.requested;
                cell.requested = true;
                drop(cells);
                if ask {
                    self.push(ToNode::Get { ids: vec![id] });
                }
                Poll::Pending
            }
        }
    }

    /// Forgets the value of `id` (its store file is gone: the node spilled it) so that the
    /// next wait asks the node again, which reads it back first.
    pub(crate) fn refetch(&self, id: ObjectId) {
        let mut cells = self.cells.lock();
        if let Some(cell) = cells.get_mut(&id) {
            if matches!(cell.state, CellState::Ready(Value::Shared(_))) {
                cell.state = CellState::Pending;
                cell.requested = false;
            }
        }
    }

    /// Whether `id` is ready or failed, without asking the node.
    pub(crate) fn is_done(&self, id: &ObjectId) -> bool {
        self.cells.lock().get(id).is_some_and(|c| !c.is_pending())
    }

    /// [`Self::is_done`] of each of `ids`, read at once.
    /// Takes one more ref to each of `ids` (as many clones would, under one lock) and says
    /// which are ready or failed.
    pub(crate) fn hold_and_check(&self, ids: impl Iterator<Item = ObjectId>) -> Vec<bool> {
        let mut cells = self.cells.lock();
        ids.map(|id| {
            let cell = cells.entry(id).or_insert_with(|| Cell::new(false));
            cell.refs += 1;
            !cell.is_pending()
        })
        .collect()
    }

    pub(crate) fn are_done(&self, ids: impl Iterator<Item = ObjectId>) -> Vec<bool> {
        let cells = self.cells.lock();
        ids.map(|id| cells.get(&id).is_some_and(|c| !c.is_pending()))
            .collect()
    }

    /// Waits (blocking this thread) until `want` of `ids` are ready or failed, or the deadline.
    pub(crate) fn wait_many(&self, ids: &[ObjectId], want: usize, deadline: Option<Instant>) {
        self.wait_until(ids, deadline, |done, _| done >= want);
    }

    /// Waits (blocking this thread) until `enough(done, failed)` of `ids` (how many are ready
    /// or failed, and how many of those failed), or the deadline.
    pub(crate) fn wait_until(
        &self,
        ids: &[ObjectId],
        deadline: Option<Instant>,
        enough: impl Fn(usize, usize) -> bool,
    ) {
        // The node is asked for those pending, in one message; the outcomes are read below.
        let mut ask = Vec::new();
        {
            let mut cells = self.cells.lock();
            let closed = self.closed();
            for id in ids {
                let Some(cell) = cells.get_mut(id) else {
                    continue;
                };
                if !cell.is_pending() {
                    continue;
                }
                if let Some(err) = &closed {
                    cell.state = CellState::Failed(err.clone());
                } else if !cell.requested {
                    cell.requested = true;
                    ask.push(*id);
                }
            }
        }
        if !ask.is_empty() {
            self.push(ToNode::Get { ids: ask });
        }
        let mut blocked = None;
        let mut spin = self.start_spin(deadline);
        let mut cells = self.cells.lock();
        loop {
            // Read under the lock: a change not counted below comes after it.
            let seen = self.cells.changes();
            let (mut done, mut failed) = (0, 0);
            for id in ids {
                match cells.get(id).map(|c| &c.state) {
                    Some(CellState::Pending) => {}
                    Some(CellState::Ready(_)) => done += 1,
                    Some(CellState::Failed(_)) | None => {
                        done += 1;
                        failed += 1;
                    }
                }
            }
            if enough(done, failed) {
                break;
            }
            if spin.may_spin() {
                drop(cells);
                let spun = spin.go(&self.cells, seen);
                cells = self.cells.lock();
                if spun {
                    continue;
                }
            }
            if blocked.is_none() {
                drop(cells);
                blocked = Some(self.report_blocked());
                cells = self.cells.lock();
                continue;
            }
            cells = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    self.cells
                        .changed
                        .wait_timeout(cells, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .cells
                    .changed
                    .wait(cells)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
        drop(cells);
        spin.end(&self.cells);
        if blocked == Some(true) {
            self.report_unblocked();
        }
    }

    /// Blocks this thread until `id` is ready or `timeout` passes.
    pub(crate) fn wait_blocking(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Value, GetError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut blocked = false;
        let mut spin = self.start_spin(deadline);
        let result = loop {
            let seen = self.cells.changes();
            if let Poll::Ready(r) = self.poll_cell(id, None, true) {
                break r;
            }
            if spin.go(&self.cells, seen) {
                continue;
            }
            if !blocked {
                blocked = self.report_blocked();
            }
            let cells = self.cells.lock();
            if cells.get(&id).is_some_and(|c| !c.is_pending()) {
                continue;
            }
            // Woken by any change (or spuriously): the next turn looks again.
            match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(GetError::Timeout(timeout.unwrap_or_default()));
                    }
                    drop(
                        self.cells
                            .changed
                            .wait_timeout(cells, d - now)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
                None => drop(
                    self.cells
                        .changed
                        .wait(cells)
                        .unwrap_or_else(|e| e.into_inner()),
                ),
            }
        };
        spin.end(&self.cells);
        if blocked {
            self.report_unblocked();
        }
        result
    }

    /// The spinning phase of a blocking wait that starts now and ends by `deadline`.
    fn start_spin(&self, deadline: Option<Instant>) -> SpinPhase {
        let start = Instant::now();
        let budget = self.cells.spin.budget();
        let until = start + budget;
        SpinPhase {
            start,
            until: deadline.map_or(until, |d| d.min(until)),
            waited: false,
        }
    }

    /// Waits (async) for one object.
    pub(crate) fn ready(&self, id: ObjectId) -> ReadyFuture<'_> {
        ReadyFuture {
            ctx: self,
            id,
            blocked: false,
        }
    }
}

/// A blocking wait's first phase: it spins (see [`Spin`]) until its budget is spent, then
/// sleeps.
struct SpinPhase {
    start: Instant,
    /// When spinning stops (at once when there is no budget).
    until: Instant,
    /// The wait did not end at its first look.
    waited: bool,
}

impl SpinPhase {
    /// Whether the budget is not spent yet.
    fn may_spin(&mut self) -> bool {
        self.waited = true;
        Instant::now() < self.until
    }

    /// Spins until a cell changes after `seen`, if the budget is not spent and another
    /// thread may spin; whether it spun (then the caller looks again). Once it may not, the
    /// wait sleeps from then on.
    fn go(&mut self, cells: &Cells, seen: u64) -> bool {
        if !self.may_spin() {
            return false;
        }
        if cells.spin_until(seen, self.until) {
            return true;
        }
        self.until = self.start;
        false
    }

    /// The wait is over: its length counts for the next ones' budgets.
    fn end(self, cells: &Cells) {
        if self.waited {
            cells.spin.record(self.start.elapsed());
        }
    }
}

/// Waits for one object cell (the async get).
pub(crate) struct ReadyFuture<'a> {
    ctx: &'a Context,
    id: ObjectId,
    blocked: bool,
}

impl Future for ReadyFuture<'_> {
    type Output = Result<Value, GetError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
        let r = self.ctx.poll_cell(self.id, Some(cx.waker()), true);
        match r {
            Poll::Pending if !self.blocked => {
                self.blocked = self.ctx.report_blocked();
                Poll::Pending
            }
            other => other,
        }
    }
}

impl Drop for ReadyFuture<'_> {
    fn drop(&mut self) {
        if self.blocked {
            self.ctx.report_unblocked();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_micros(200);

    #[test]
    fn long_waits_turn_spinning_off_and_short_ones_turn_it_on_again() {
        let spin = Spin::new(LIMIT, 1);
        assert_eq!(spin.budget(), LIMIT, "no wait yet: spins");
        for _ in 0..4 {
            spin.record(Duration::from_micros(40));
        }
        assert_eq!(spin.budget(), LIMIT, "short waits: spins");
        // One get of a slow task is enough to stop it (counted as 8 limits at most).
        spin.record(Duration::from_secs(5));
        assert_eq!(
            spin.budget(),
            Duration::ZERO,
            "after a long wait: sleeps at once"
        );
        // After a run of them, it takes a run of short waits to spin again.
        for _ in 0..16 {
            spin.record(Duration::from_secs(5));
        }
        let mut short = 0;
        while spin.budget().is_zero() {
            spin.record(Duration::from_micros(40));
            short += 1;
            assert!(short < 100, "short waits never turned spinning on again");
        }
        assert!(
            short > 8,
            "{short} short waits made up for a run of long ones"
        );
        assert_eq!(spin.budget(), LIMIT);
    }

    #[test]
    fn waits_just_over_the_limit_keep_spinning_off() {
        let spin = Spin::new(LIMIT, 1);
        for _ in 0..64 {
            spin.record(LIMIT * 2);
        }
        assert_eq!(spin.budget(), Duration::ZERO);
    }

    #[test]
    fn no_limit_never_spins() {
        let spin = Spin::new(Duration::ZERO, 4);
        spin.record(Duration::from_micros(1));
        assert_eq!(spin.budget(), Duration::ZERO);
    }

    #[test]
    fn a_spinning_wait_ends_at_a_change_and_only_so_many_spin_at_once() {
        let cells = Arc::new(Cells {
            spin: Spin::new(Duration::from_secs(60), 1),
            ..Cells::default()
        });
        let seen = cells.changes();
        let far = Instant::now() + Duration::from_secs(60);
        let spinner = {
            let cells = cells.clone();
            std::thread::spawn(move || cells.spin_until(seen, far))
        };
        // Wait until the spinner holds the one slot: a second thread may not spin then.
        while cells.spin.spinning.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        assert!(
            !cells.spin_until(seen, far),
            "a second thread spun beside the first"
        );
        assert_eq!(cells.spin.spinning.load(Ordering::Relaxed), 1);
        cells.wake_blocked();
        assert!(spinner.join().unwrap(), "the spinner did not spin");
        assert_eq!(cells.spin.spinning.load(Ordering::Relaxed), 0);
        // A spin past its end returns at once.
        let past = Instant::now();
        assert!(cells.spin_until(cells.changes(), past));
    }
}
