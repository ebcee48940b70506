//! A worker's stdout and stderr, read line by line for the programs whose work it runs.
//!
//! Each pipe is read by a task of the worker's watcher as the worker writes, and the event
//! loop drains both pipes itself before it takes a result from the worker. A worker writes
//! what a task prints before it sends the task's result, so what a task printed reaches its
//! program before its result does (without the drain, a program that exits as soon as it
//! has its result could end before the reader task is scheduled and never print the line).
//!
//! Reads of one pipe are serialised by its lock, and the lines they make wait in the pipe's
//! queue until the event loop takes them, so lines keep the order they were written in. A
//! reader stops reading while [`MAX_PENDING`] lines wait: the worker then waits on its
//! writes, as on a slow terminal.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_protocol::state::{Stream, MAX_LOG_LINE};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Notify};

use super::Event;
use crate::core::sched::WorkerId;

/// Lines that may wait in one pipe's queue before its reader stops reading.
pub const MAX_PENDING: usize = 8192;

/// Bytes read at once.
const CHUNK: usize = 16 * 1024;

/// Bytes a reader reads before it lets other tasks run.
const READ_TURN: usize = 4 * CHUNK;

/// Bytes a drain reads at most: what a pipe can hold (Linux's largest pipe by default), so
/// everything written before the result, which the reader has not read yet, is in it.
const DRAIN: usize = 1 << 20;

/// Lines a worker wrote on one of its outputs.
#[derive(Debug)]
pub struct Lines {
    /// Which output.
    pub stream: Stream,
    /// The lines, without their newlines (a line longer than [`MAX_LOG_LINE`] is cut into
    /// several).
    pub lines: Vec<String>,
}

/// One of a worker's outputs.
#[derive(Debug)]
struct Pipe {
    stream: Stream,
    /// Registered with the runtime: its reader waits on it.
    rx: pipe::Receiver,
    /// The same pipe, for the event loop's reads (the runtime's idea of whether the pipe is
    /// readable may be behind: a read must be tried).
    raw: std::fs::File,
    state: Mutex<PipeState>,
}

#[derive(Debug, Default)]
struct PipeState {
    /// The start of a line whose end has not been read.
    partial: Vec<u8>,
    /// Whole lines not yet taken by the event loop.
    ready: Vec<String>,
    /// Whether the event loop was told about `ready` and has not taken it yet.
    told: bool,
}

/// A worker's captured outputs: see the [module documentation](self).
#[derive(Debug)]
pub struct Output {
    /// The worker.
    pub worker: WorkerId,
    pipes: [Pipe; 2],
    /// Woken when lines are taken.
    taken: Notify,
}

/// Whether a pipe may still have more.
enum PipeEnd {
    /// Nothing more for now.
    Open,
    /// The pipe is closed (or failed): nothing more ever.
    Closed,
}

impl PipeState {
    /// Splits `bytes` into lines onto `ready` (a line longer than [`MAX_LOG_LINE`] is cut
    /// into lines of that length and a shorter last one).
    fn take_bytes(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (mut body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body.strip_suffix(b"\r").unwrap_or(body), true),
                None => (piece, false),
            };
            while self.partial.len() + body.len() > MAX_LOG_LINE {
                let (head, rest) = body.split_at(MAX_LOG_LINE - self.partial.len());
                self.partial.extend_from_slice(head);
                self.end_line();
                body = rest;
            }
            self.partial.extend_from_slice(body);
            if ends {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        self.ready
            .push(String::from_utf8_lossy(&self.partial).into_owned());
        self.partial.clear();
    }
}

impl Pipe {
    fn new(stream: Stream, fd: OwnedFd) -> std::io::Result<Pipe> {
        let rx = pipe::Receiver::from_owned_fd(fd)?;
        let raw = std::fs::File::from(rx.as_fd().try_clone_to_owned()?);
        Ok(Pipe {
            stream,
            rx,
            raw,
            state: Mutex::new(PipeState::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what the pipe holds into `state`, with `read` (which answers `WouldBlock` once
    /// the pipe is empty), `budget` bytes at most (a worker that writes on and on does not
    /// keep its reader here).
    fn read_into(
        state: &mut PipeState,
        chunk: &mut [u8],
        mut budget: usize,
        mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> PipeEnd {
        loop {
            if budget == 0 {
                return PipeEnd::Open;
            }
            match read(chunk) {
                Ok(0) => {
                    if !state.partial.is_empty() {
                        state.end_line();
                    }
                    return PipeEnd::Closed;
                }
                Ok(n) => {
                    state.take_bytes(&chunk[..n]);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return PipeEnd::Open,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "reading a worker's output failed");
                    return PipeEnd::Closed;
                }
            }
        }
    }
}

impl Output {
    /// New pipes for worker `worker`: the output, and the write ends of its stdout and
    /// stderr for the process (the read ends are closed on exec).
    pub fn new(worker: WorkerId) -> std::io::Result<(Arc<Output>, [OwnedFd; 2])> {
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let output = Arc::new(Output {
            worker,
            pipes: [
                Pipe::new(Stream::Stdout, out_r.into())?,
                Pipe::new(Stream::Stderr, err_r.into())?,
            ],
            taken: Notify::new(),
        });
        Ok((output, [out_w.into(), err_w.into()]))
    }

    /// Reads both pipes to their ends, telling `events` when lines wait (and waiting while
    /// [`MAX_PENDING`] lines of a pipe do). Ends early once the event loop is gone.
    pub async fn read(self: Arc<Self>, events: mpsc::Sender<Event>) {
        tokio::join!(self.read_pipe(0, &events), self.read_pipe(1, &events));
    }

    async fn read_pipe(self: &Arc<Self>, index: usize, events: &mpsc::Sender<Event>) {
        let pipe = &self.pipes[index];
        let mut chunk = vec![0u8; CHUNK];
        loop {
            if let Err(e) = pipe.rx.readable().await {
                tracing::debug!(worker = self.worker, error = %e, "cannot wait on a worker's output");
                return;
            }
            let (read, tell) = {
                let mut state = pipe.state();
                let read = Pipe::read_into(&mut state, &mut chunk, READ_TURN, |buf| {
                    pipe.rx.try_read(buf)
                });
                let tell = !state.ready.is_empty() && !state.told;
                state.told |= tell;
                (read, tell)
            };
            if tell
                && events
                    .send(Event::WorkerOutput(self.clone()))
                    .await
                    .is_err()
            {
                tracing::debug!(
                    worker = self.worker,
                    "the node stopped; a worker's output is not read"
                );
                return;
            }
            if let PipeEnd::Closed = read {
                return;
            }
            // Wait while the event loop is behind.
            loop {
                let taken = self.taken.notified();
                tokio::pin!(taken);
                taken.as_mut().enable();
                if pipe.state().ready.len() < MAX_PENDING {
                    break;
                }
                taken.await;
            }
        }
    }

    /// The lines waiting, per output.
    pub fn take(&self) -> Vec<Lines> {
        let out = self
            .pipes
            .iter()
            .filter_map(|p| {
                let mut state = p.state();
                state.told = false;
                (!state.ready.is_empty()).then(|| Lines {
                    stream: p.stream,
                    lines: std::mem::take(&mut state.ready),
                })
            })
            .collect();
        self.taken.notify_waiters();
        out
    }

    /// Reads what the pipes hold now (through `scratch`), and takes every line waiting:
    /// for the event loop, before it takes a result from the worker.
    pub fn drain(&self, scratch: &mut Vec<u8>) -> Vec<Lines> {
        scratch.resize(CHUNK, 0);
        for p in &self.pipes {
            let mut state = p.state();
            // An end or a failure is the reader's to see too.
            Pipe::read_into(&mut state, scratch, DRAIN, |buf| (&p.raw).read(buf));
        }
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn output() -> (Arc<Output>, std::fs::File, std::fs::File) {
        let (output, [out, err]) = Output::new(7).unwrap();
        (output, out.into(), err.into())
    }

    #[tokio::test]
    async fn a_drain_takes_what_was_written_before_the_reader_ran() {
        let (output, mut out_w, mut err_w) = output();
        let mut scratch = Vec::new();
        out_w
            .write_all(b"first\nsecond\r\nthird without end")
            .unwrap();
        err_w.write_all(b"oops\n").unwrap();
        // No reader has run: the drain reads the pipes itself.
        let lines = output.drain(&mut scratch);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].stream, Stream::Stdout);
        assert_eq!(lines[0].lines, ["first", "second"]);
        assert_eq!(lines[1].stream, Stream::Stderr);
        assert_eq!(lines[1].lines, ["oops"]);
        assert!(output.drain(&mut scratch).is_empty());
        // The rest of a line is kept until its end, or the pipe's.
        out_w.write_all(b", now\n").unwrap();
        assert_eq!(
            output.drain(&mut scratch)[0].lines,
            ["third without end, now"]
        );
        out_w.write_all(b"unfinished").unwrap();
        drop((out_w, err_w));
        let (tx, mut rx) = mpsc::channel(4);
        output.clone().read(tx).await;
        let Some(Event::WorkerOutput(told)) = rx.recv().await else {
            panic!("the reader tells the event loop");
        };
        assert_eq!(told.take()[0].lines, ["unfinished"]);
    }

    #[tokio::test]
    async fn the_reader_keeps_order_with_drains_and_cuts_long_lines() {
        let (output, mut out_w, err_w) = output();
        let (tx, mut rx) = mpsc::channel(64);
        let reader = tokio::spawn(output.clone().read(tx));
        drop(err_w);
        let long = "x".repeat(3 * MAX_LOG_LINE + 10);
        let writer = std::thread::spawn(move || {
            for i in 0..2000 {
                writeln!(out_w, "line {i}").unwrap();
            }
            writeln!(out_w, "{long}").unwrap();
            writeln!(out_w, "{}", "y".repeat(MAX_LOG_LINE)).unwrap();
        });
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        let mut turn = 0;
        // Alternate between the reader's lines and drains of our own, until the reader saw
        // the end.
        loop {
            let batch = if turn % 2 == 0 {
                match rx.recv().await {
                    Some(Event::WorkerOutput(o)) => o.take(),
                    Some(_) => panic!("only output"),
                    None => break,
                }
            } else {
                output.drain(&mut scratch)
            };
            turn += 1;
            for l in batch {
                got.extend(l.lines);
            }
        }
        writer.join().unwrap();
        reader.await.unwrap();
        assert_eq!(got.len(), 2005, "{:?}", &got[got.len().saturating_sub(5)..]);
        for (i, line) in got[..2000].iter().enumerate() {
            assert_eq!(line, &format!("line {i}"));
        }
        for cut in &got[2000..2003] {
            assert_eq!(cut, &"x".repeat(MAX_LOG_LINE));
        }
        assert_eq!(got[2003], "x".repeat(10));
        assert_eq!(got[2004], "y".repeat(MAX_LOG_LINE));
    }
}
