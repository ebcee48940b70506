//! Printing what the program's tasks and actors write, wherever they ran: each line with a
//! prefix naming its function, process and peer, as Ray does (`(f pid=… peer=…) text`), to
//! the program's stdout or stderr as written.
//!
//! Lines of one pattern (words with digits in them left out) repeated within
//! [`WINDOW`] are printed once; when the window closes (looked at every second, and when the
//! connection ends) the last of them is printed with how many were held back:
//! `… [repeated 9x across the mesh]`, as Ray does.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_protocol::state::{LogLine, Stream};

/// How long repeats of a line are held back.
pub(crate) const WINDOW: Duration = Duration::from_secs(5);
/// Patterns remembered at most (the oldest window closes first past it).
const PATTERNS: usize = 1_000;

/// A pattern printed within the window.
struct Seen {
    first: Instant,
    /// Repeats held back, and the last of them.
    held: u64,
    last: Option<LogLine>,
}

/// See the [module documentation](self).
#[derive(Default)]
pub(crate) struct Printer {
    seen: Mutex<HashMap<String, Seen>>,
}

/// The line with its words that hold digits left out: what repeats are recognised by.
fn pattern(line: &LogLine) -> String {
    let mut p = String::with_capacity(line.text.len() + line.function.len() + 8);
    p.push_str(line.stream.name());
    p.push(' ');
    p.push_str(&line.function);
    for word in line.text.split_whitespace() {
        p.push(' ');
        if word.chars().any(|c| c.is_ascii_digit()) {
            p.push('*');
        } else {
            p.push_str(word);
        }
    }
    p
}

fn write(line: &LogLine, repeated: Option<u64>) {
    let text = match repeated {
        Some(n) => format!(
            "{} {} [repeated {n}x across the mesh]",
            line.prefix(),
            line.text
        ),
        None => format!("{} {}", line.prefix(), line.text),
    };
    let written = match line.stream {
        Stream::Stdout => writeln!(std::io::stdout().lock(), "{text}"),
        Stream::Stderr => writeln!(std::io::stderr().lock(), "{text}"),
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot print a task's output");
    }
}

impl Printer {
    /// Prints `lines` (holding back repeats), after closing the windows that have passed.
    pub(crate) fn print(&self, lines: Vec<LogLine>) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        close(&mut seen, |s| now.duration_since(s.first) >= WINDOW);
        for line in lines {
            let key = pattern(&line);
            match seen.get_mut(&key) {
                Some(s) => {
                    s.held += 1;
                    s.last = Some(line);
                }
                None => {
                    write(&line, None);
                    if seen.len() >= PATTERNS {
                        let oldest = seen.values().map(|s| s.first).min();
                        close(&mut seen, |s| Some(s.first) == oldest);
                    }
                    seen.insert(
                        key,
                        Seen {
                            first: now,
                            held: 0,
                            last: None,
                        },
                    );
                }
            }
        }
    }

    /// Closes the windows that have passed.
    pub(crate) fn close_passed(&self) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.is_empty() {
            close(&mut seen, |s| now.duration_since(s.first) >= WINDOW);
        }
    }

    /// Closes every window (the program ends).
    pub(crate) fn flush(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        close(&mut seen, |_| true);
    }
}

/// Prints the repeats held back by the windows `done` picks, and forgets those windows.
fn close(seen: &mut HashMap<String, Seen>, done: impl Fn(&Seen) -> bool) {
    seen.retain(|_, s| {
        if !done(s) {
            return true;
        }
        if let Some(last) = &s.last {
            write(last, Some(s.held));
        }
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, pid: u32) -> LogLine {
        LogLine {
            node: "12D3KooWAbcdefghijklmnop".into(),
            function: "my::f".into(),
            pid,
            task_id: None,
            actor_id: None,
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    #[test]
    fn repeats_ignore_words_with_digits() {
        assert_eq!(
            pattern(&line("step 5 of 9", 1)),
            pattern(&line("step 6 of 9", 2))
        );
        assert_ne!(pattern(&line("step 5 of 9", 1)), pattern(&line("done", 1)));
        assert_eq!(line("hi", 42).prefix(), "(f pid=42 peer=12D3KooWAbcdefgh)");
        let p = Printer::default();
        p.print(vec![
            line("step 1", 1),
            line("step 2", 2),
            line("step 3", 3),
        ]);
        {
            let seen = p.seen.lock().unwrap();
            let s = seen.values().next().unwrap();
            assert_eq!(s.held, 2);
            assert_eq!(s.last.as_ref().unwrap().text, "step 3");
        }
        p.flush();
        assert!(p.seen.lock().unwrap().is_empty());
    }
}
