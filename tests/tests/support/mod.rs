//! Helpers shared by the cross-crate tests.

// Each test binary uses a subset of these.
#![allow(dead_code)]

use std::process::Child;

/// Field `n` of `/proc/<pid>/stat` after the command name (0 is the state, 1 the parent pid);
/// `None` if there is no such process.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(n))
        .map(str::to_string)
}

/// The parent pid of `pid`, from `/proc`.
pub fn parent_of(pid: u32) -> u32 {
    stat_field(pid, 1)
        .expect("process exists")
        .parse()
        .expect("a ppid field")
}

/// Whether process `pid` has ended: gone, or a zombie nobody has reaped yet.
pub fn has_ended(pid: u32) -> bool {
    stat_field(pid, 0).is_none_or(|state| state == "Z" || state == "X")
}

/// Kills (and reaps) our child when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
