//! Errors nobody read (issue 14), as Ray's "Unhandled error" lines: a program that drops the
//! result of a failed task without getting it is told on stderr, with the task's error; one
//! that got the error, or dropped a cancelled task's result, is not; and
//! `SHOAL_IGNORE_UNHANDLED_ERRORS=1` hides the lines. Each case runs as a program of its own
//! (this test binary again, with an embedded node), so that its stderr can be read.

use std::process::{Command, Stdio};
use std::time::Duration;

const ENV_CASE: &str = "SHOAL_TEST_UNHANDLED_CASE";

#[shoal::remote]
fn fails(why: String) -> u64 {
    panic!("{why}")
}

#[shoal::remote]
fn spins() -> u64 {
    while !shoal::is_cancelled() {
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

/// The programs of the tests below (a no-op when run as a test of its own).
#[test]
fn case_entry() {
    let Ok(case) = std::env::var(ENV_CASE) else {
        return;
    };
    shoal::init().unwrap();
    let r = fails.remote(format!("the {case} case fails"));
    // Done, one way or the other, without reading it.
    let (ready, _) =
        shoal::wait_blocking(std::slice::from_ref(&r), 1, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(ready.len(), 1);
    match case.as_str() {
        "dropped" | "ignored" => drop(r),
        "read" => assert!(r.get_blocking().is_err()),
        "cancelled" => {
            drop(r);
            let s = spins.remote();
            shoal::cancel(&s).unwrap();
            let (ready, _) =
                shoal::wait_blocking(std::slice::from_ref(&s), 1, Some(Duration::from_secs(60)))
                    .unwrap();
            assert_eq!(ready.len(), 1);
        }
        other => panic!("unknown case {other}"),
    }
    println!("case done");
}

/// Runs `case` as a program of its own; returns its stderr.
fn run(case: &str, ignore: bool) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "case_entry", "--nocapture", "--quiet"])
        .env(ENV_CASE, case)
        .env("SHOAL_SOCKET", "/nonexistent/shoal.sock")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if ignore {
        cmd.env("SHOAL_IGNORE_UNHANDLED_ERRORS", "1");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && stdout.contains("case done"),
        "case {case}: {stdout}\n{stderr}"
    );
    stderr
}

fn unhandled_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("shoal: unhandled error"))
        .collect()
}

#[test]
fn a_failure_dropped_unread_is_reported_once_with_its_error() {
    let stderr = run("dropped", false);
    let lines = unhandled_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("the dropped case fails"), "{stderr}");
}

#[test]
fn a_failure_read_a_cancel_or_an_ignored_failure_is_not_reported() {
    for (case, ignore) in [("read", false), ("cancelled", false), ("ignored", true)] {
        let stderr = run(case, ignore);
        let lines = unhandled_lines(&stderr);
        let want = usize::from(case == "cancelled");
        // The cancelled case drops a failed result too, first: only that one is reported.
        assert_eq!(lines.len(), want, "case {case}: {stderr}");
        if case == "cancelled" {
            assert!(lines[0].contains("the cancelled case fails"), "{stderr}");
        }
    }
}
