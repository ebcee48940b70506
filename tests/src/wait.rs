//! Waiting on a condition under a deadline: [`wait_for`] polls any check, [`wait_for_line`]
//! a log file for a line. Nothing here sleeps in place of a check, and nothing waits forever.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// How often the waits here poll.
pub const POLL: Duration = Duration::from_millis(50);

/// How long a test waits, by default, for a node to answer, to log a line or to stop.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Calls `check` every [`POLL`] until it returns `Some`, and returns that with how long it
/// took. After `timeout` it gives up with an error naming `what` and the last error `check`
/// returned, if any (errors are taken as "not yet").
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok((v, start.elapsed())),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The text of the file at `path` from byte `offset` on (lossily decoded).
fn read_from(path: &Path, offset: u64) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Waits until a line of the file at `path`, from byte `offset` on, contains every one of
/// `needles`; returns that line. Polls the file every [`POLL`], for at most `timeout`.
pub fn wait_for_line(
    path: &Path,
    offset: u64,
    needles: &[&str],
    timeout: Duration,
) -> Result<String> {
    let what = format!("a line with {needles:?} in {}", path.display());
    wait_for(timeout, &what, || {
        let text = read_from(path, offset)?;
        // Whole lines only: the last one may still be being written.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        Ok(whole
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned))
    })
    .map(|(line, _)| line)
}

/// The last `lines` lines of the file at `path` (at most its last 16 KiB), or a note saying why
/// there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}
