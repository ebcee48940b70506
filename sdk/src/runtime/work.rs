//! What the node hands a worker process, and the blocked/unblocked protocol around a task
//! that waits.
//!
//! The connection's reader puts each `Execute` (a task, or an actor's method call) and each
//! `HostActor` into a bounded queue that the worker loop (`crate::worker`) takes from. While
//! a running task waits for an object, the worker tells the node it is `Blocked` (the node
//! then lends its CPU to another task) and hands back the tasks queued behind it, which might
//! be what it waits for; tasks that arrive meanwhile go straight back too. When the wait ends
//! it says `Unblocked`. In a driver the queue stays empty and the protocol is never used.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use shoal_protocol::{ExecTask, HostActor, TaskId, ToNode, CANCELLED_EXIT};
use tokio::sync::mpsc;

use super::{Context, Mode};

/// Work items queued in a worker before the connection's reader hands tasks back.
pub(super) const QUEUE: usize = 4096;

/// Cancels remembered for tasks not yet ended here (a cancel of a task that ended just
/// before it came stays until newer ones push it out).
const INTERRUPTS: usize = 1024;

/// What a worker is handed: a task (or an actor's method call), or an actor to become.
#[derive(Debug)]
pub(crate) enum WorkItem {
    Task(ExecTask),
    HostActor(HostActor),
}

/// The worker's side of the queue, and whether a task runs or waits.
#[derive(Debug)]
pub(crate) struct Work {
    /// Taken for good by an actor's host, which awaits it on its own runtime.
    rx: Mutex<Option<mpsc::Receiver<WorkItem>>>,
    /// Set while a worker runs a task, so waits inside it can report `Blocked`.
    in_task: AtomicBool,
    /// Set while the running task waits: tasks arriving meanwhile are handed back.
    waiting: Mutex<bool>,
    /// Set (under `waiting`'s lock) once the worker ran a function its `max_calls` times:
    /// every task it is handed from then on goes back.
    retired: AtomicBool,
    /// The task the worker loop runs, if any. Held by [`Work::cancel`] as it ends the
    /// process, so that no next task starts meanwhile.
    current: Mutex<Option<TaskId>>,
    /// Tasks the node cancelled without ending the process, oldest first.
    interrupted: Mutex<std::collections::VecDeque<TaskId>>,
    /// How many: read without the lock by every task's checks (nearly always none).
    interrupts: AtomicUsize,
    /// Woken on each cancel, for the tasks that wait for theirs.
    interrupt: tokio::sync::Notify,
    /// How far each streaming generator handed here may run (the node's last word).
    paces: Mutex<std::collections::HashMap<TaskId, u32>>,
    /// Signalled when a pace rises or a task is cancelled.
    pace_changed: std::sync::Condvar,
    /// The same, for generators that await (an `async` actor method's).
    pace_notify: tokio::sync::Notify,
}

/// Paces remembered at most (those of tasks that ended, told late, are dropped past this).
const PACES: usize = 1024;

impl Work {
    pub(super) fn new(rx: mpsc::Receiver<WorkItem>) -> Self {
        Self {
            rx: Mutex::new(Some(rx)),
            in_task: AtomicBool::new(false),
            waiting: Mutex::new(false),
            retired: AtomicBool::new(false),
            current: Mutex::new(None),
            interrupted: Mutex::new(std::collections::VecDeque::new()),
            interrupts: AtomicUsize::new(0),
            interrupt: tokio::sync::Notify::new(),
            paces: Mutex::new(std::collections::HashMap::new()),
            pace_changed: std::sync::Condvar::new(),
            pace_notify: tokio::sync::Notify::new(),
        }
    }

    fn lock_paces(&self) -> MutexGuard<'_, std::collections::HashMap<TaskId, u32>> {
        self.paces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The streaming generator `task` may yield items up to `allowed` (the node says so when
    /// it hands the task over, and as its consumer takes items).
    pub(crate) fn stream_ack(&self, task: TaskId, allowed: u32) {
        {
            let mut paces = self.lock_paces();
            if paces.len() >= PACES && !paces.contains_key(&task) {
                // Told late, for tasks that ended: only the one running matters.
                let current = *self.lock_current();
                paces.retain(|t, _| Some(*t) == current);
            }
            let pace = paces.entry(task).or_insert(0);
            *pace = (*pace).max(allowed);
        }
        self.pace_changed.notify_all();
        self.pace_notify.notify_waiters();
    }

    /// [`Work::wait_pace`], awaited.
    pub(crate) async fn wait_pace_async(&self, task: TaskId, index: u32) -> bool {
        loop {
            let woken = self.pace_notify.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();
            if self.is_interrupted(task) {
                return false;
            }
            if self.lock_paces().get(&task).is_some_and(|p| *p >= index) {
                return true;
            }
            woken.await;
        }
    }

    /// Waits until the streaming generator `task` may yield item `index`. `false` if the
    /// task was cancelled meanwhile.
    pub(crate) fn wait_pace(&self, task: TaskId, index: u32) -> bool {
        let mut paces = self.lock_paces();
        loop {
            if self.is_interrupted(task) {
                return false;
            }
            if paces.get(&task).is_some_and(|p| *p >= index) {
                return true;
            }
            paces = self
                .pace_changed
                .wait(paces)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Forgets `task`'s pace (it ended).
    pub(crate) fn end_pace(&self, task: TaskId) {
        self.lock_paces().remove(&task);
    }

    /// Whether the worker retired ([`Context::retire`]): tasks it is handed go back.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn lock_rx(&self) -> MutexGuard<'_, Option<mpsc::Receiver<WorkItem>>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_waiting(&self) -> MutexGuard<'_, bool> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next item, blocking this thread; `None` once the connection is gone. The queue
    /// stays locked while idle; a running task's waits drain it.
    pub(crate) fn next_blocking(&self) -> Option<WorkItem> {
        self.lock_rx().as_mut()?.blocking_recv()
    }

    /// The queue itself, for a loop of its own (an actor's host).
    pub(crate) fn take_queue(&self) -> Option<mpsc::Receiver<WorkItem>> {
        self.lock_rx().take()
    }

    /// Gives a queue taken with [`Work::take_queue`] back.
    pub(crate) fn put_back(&self, rx: mpsc::Receiver<WorkItem>) {
        *self.lock_rx() = Some(rx);
    }

    /// Marks the start or the end of a task run by the worker loop.
    pub(crate) fn set_in_task(&self, running: bool) {
        self.in_task.store(running, Ordering::Relaxed);
    }

    fn lock_current(&self) -> MutexGuard<'_, Option<TaskId>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker loop begins `task` (`Some`) or has reported its end (`None`).
    pub(crate) fn set_current(&self, task: Option<TaskId>) {
        *self.lock_current() = task;
    }

    /// The node cancels `task`. Forced, if the worker loop runs it, the process ends now,
    /// with [`CANCELLED_EXIT`] (and the lock held, so no later task begins first).
    /// Otherwise the cancel is remembered: the task does not start if it has not, and one
    /// that runs sees it ([`Work::interrupted`], `shoal::is_cancelled`).
    pub(super) fn cancel(&self, task: TaskId, force: bool) {
        let current = self.lock_current();
        if force && *current == Some(task) {
            tracing::info!(task = %task, "the node stops the running task; exiting");
            // SAFETY: `_exit` ends the process without running exit handlers or
            // destructors, which the running task's thread could otherwise race with; it
            // never returns.
            unsafe { libc::_exit(CANCELLED_EXIT) }
        }
        drop(current);
        tracing::debug!(task = %task, "task cancelled");
        {
            let mut list = self.lock_interrupted();
            if list.len() >= INTERRUPTS {
                list.pop_front();
            }
            list.push_back(task);
            self.interrupts.store(list.len(), Ordering::Release);
        }
        self.interrupt.notify_waiters();
        // A generator waiting for its consumer stops waiting. (Under the lock, so that a
        // waiter between its check and its wait does not miss it.)
        let _paces = self.lock_paces();
        self.pace_changed.notify_all();
        self.pace_notify.notify_waiters();
    }

    fn lock_interrupted(&self) -> MutexGuard<'_, std::collections::VecDeque<TaskId>> {
        self.interrupted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `task` was cancelled.
    pub(crate) fn is_interrupted(&self, task: TaskId) -> bool {
        self.interrupts.load(Ordering::Acquire) > 0 && self.lock_interrupted().contains(&task)
    }

    /// Forgets `task`'s cancel (it ended); returns whether there was one.
    pub(crate) fn take_interrupted(&self, task: TaskId) -> bool {
        if self.interrupts.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut list = self.lock_interrupted();
        let Some(pos) = list.iter().position(|t| *t == task) else {
            return false;
        };
        list.remove(pos);
        self.interrupts.store(list.len(), Ordering::Release);
        true
    }

    /// Resolves once `task` is cancelled.
    pub(crate) async fn interrupted(&self, task: TaskId) {
        loop {
            let woken = self.interrupt.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();
            if self.is_interrupted(task) {
                return;
            }
            woken.await;
        }
    }
}

impl Context {
    /// Hands a task from the node to the worker loop, or back to the node when the running
    /// task waits (the new one might be what it waits for) or the queue is full.
    pub(super) fn offer_task(&self, task: ExecTask, queue: &mpsc::Sender<WorkItem>) {
        let waiting = self.work.lock_waiting();
        if *waiting || self.work.is_retired() {
            drop(waiting);
            self.push(ToNode::Returned {
                tasks: vec![task.task_id],
            });
            return;
        }
        if let Err(e) = queue.try_send(WorkItem::Task(task)) {
            drop(waiting);
            let (mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item)) =
                e;
            if let WorkItem::Task(task) = item {
                self.push(ToNode::Returned {
                    tasks: vec![task.task_id],
                });
            }
        }
    }

    /// In a worker running a task, tells the node this task now waits (and so lends its CPU).
    /// Tasks queued here behind the waiting one go back to the node: they might be what it
    /// waits for. Returns whether it told the node (then [`Context::report_unblocked`] must
    /// follow).
    pub(super) fn report_blocked(&self) -> bool {
        if self.mode != Mode::Worker || !self.work.in_task.load(Ordering::Relaxed) {
            return false;
        }
        let mut waiting = self.work.lock_waiting();
        *waiting = true;
        let mut back = Vec::new();
        if let Some(rx) = self.work.lock_rx().as_mut() {
            while let Ok(item) = rx.try_recv() {
                if let WorkItem::Task(t) = item {
                    back.push(t.task_id);
                }
            }
        }
        self.push(ToNode::Blocked);
        if !back.is_empty() {
            self.push(ToNode::Returned { tasks: back });
        }
        drop(waiting);
        true
    }

    /// In a worker that ran a function its `max_calls` times: takes no more tasks (those
    /// queued or handed to it later go back) and asks the node to replace it.
    pub(crate) fn retire(&self) {
        let waiting = self.work.lock_waiting();
        self.work.retired.store(true, Ordering::Release);
        drop(waiting);
        self.push(ToNode::Retire);
    }

    /// The wait reported by [`Context::report_blocked`] is over.
    pub(super) fn report_unblocked(&self) {
        *self.work.lock_waiting() = false;
        self.push(ToNode::Unblocked);
    }
}
