//! A progress bar on stderr for long CLI work, drawn only when stderr is a terminal (piped
//! or redirected, the command prints no bar at all).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Width of the bar itself, in cells.
const CELLS: usize = 30;
/// Redrawn at most this often.
const EVERY: Duration = Duration::from_millis(100);

/// One bar, redrawn in place.
pub(crate) struct Bar {
    label: String,
    on: bool,
    started: Instant,
    drawn: Option<Instant>,
}

impl Bar {
    /// A bar labelled `label`, shown if stderr is a terminal.
    pub(crate) fn new(label: impl Into<String>) -> Bar {
        Bar::with(label, std::io::stderr().is_terminal())
    }

    fn with(label: impl Into<String>, on: bool) -> Bar {
        Bar {
            label: label.into(),
            on,
            started: Instant::now(),
            drawn: None,
        }
    }

    /// Shows `done` of `total` bytes (unless drawn less than [`EVERY`] ago).
    pub(crate) fn set(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        if !self.on || self.drawn.is_some_and(|t| now - t < EVERY) {
            return;
        }
        self.drawn = Some(now);
        self.draw(&line(&self.label, done, total, now - self.started), false);
    }

    /// Shows the work done (`total` bytes) and ends the line.
    pub(crate) fn finish(&mut self, total: u64) {
        if self.on {
            let text = line(&self.label, total, total, self.started.elapsed());
            self.draw(&text, true);
            self.on = false;
        }
    }

    /// Clears the bar (before an error is printed).
    pub(crate) fn clear(&mut self) {
        if self.on && self.drawn.is_some() {
            self.draw("", false);
        }
        self.on = false;
    }

    fn draw(&self, text: &str, end: bool) {
        let mut err = std::io::stderr().lock();
        // A terminal that cannot take the bar loses nothing but the bar.
        let drawn = write!(err, "\r\x1b[2K{text}{}", if end { "\n" } else { "" })
            .and_then(|()| err.flush());
        if let Err(e) = drawn {
            tracing::debug!(error = %e, "cannot draw the progress bar");
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.clear();
    }
}

/// `label [#######.......]  45%  12.0 MiB / 26.0 MiB  85.3 MiB/s`
fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let done = if total > 0 { done.min(total) } else { done };
    let share = if total > 0 {
        done as f64 / total as f64
    } else {
        0.0
    };
    let full = ((share * CELLS as f64) as usize).min(CELLS);
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    format!(
        "{label} [{}{}] {:>3.0}%  {} / {}  {}/s",
        "#".repeat(full),
        ".".repeat(CELLS - full),
        share * 100.0,
        bytes(done),
        if total > 0 { bytes(total) } else { "?".into() },
        bytes(rate as u64),
    )
}

/// Bytes in binary units, one decimal.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_share_bytes_and_rate() {
        let l = line("obj", 13 << 20, 26 << 20, Duration::from_secs(2));
        assert_eq!(
            l,
            "obj [###############...............]  50%  13.0 MiB / 26.0 MiB  6.5 MiB/s"
        );
        // More than the total (a piece pulled again) shows as the total.
        assert!(line("obj", 30, 20, Duration::from_secs(1)).contains("100%  20 B / 20 B"));
        // Size not known yet.
        assert!(line("bin", 5, 0, Duration::ZERO).contains("  0%  5 B / ?  0 B/s"));
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn off_the_terminal_nothing_is_drawn() {
        let mut bar = Bar::with("x", false);
        bar.set(1, 2);
        assert!(bar.drawn.is_none());
        bar.finish(2);
        assert!(!bar.on);
    }
}
