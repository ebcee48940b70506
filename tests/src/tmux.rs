//! A real terminal for tests of terminal output (`shoal top`, progress bars): a tmux server
//! of the test's own (its own socket name), with one session, stopped when dropped.
//!
//! Tests skip (with a note) when tmux is not installed, unless `$SHOAL_TMUX_REQUIRED` is
//! set; `.ci/run` installs it and sets that.

use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server with one session running one command; the server is killed on drop.
pub struct Tmux {
    server: String,
    session: String,
}

impl Tmux {
    /// Whether tmux can be used here: `false` (after a note on stderr) when it is not
    /// installed; panics then if `$SHOAL_TMUX_REQUIRED` is set.
    pub fn available(what: &str) -> bool {
        if Command::new("tmux").arg("-V").output().is_ok() {
            return true;
        }
        // CI installs it, and says so: there the test must run.
        assert!(
            std::env::var_os("SHOAL_TMUX_REQUIRED").is_none(),
            "tmux is required here and not installed"
        );
        eprintln!("tmux is not installed: skipping {what}");
        false
    }

    /// Runs `command` (a shell command line) in a new `width`×`height` terminal, session
    /// `session` of a server of this process's own.
    pub fn start(session: &str, width: u16, height: u16, command: &str) -> Tmux {
        let tmux = Tmux {
            server: format!("shoal-test-{session}-{}", std::process::id()),
            session: session.to_string(),
        };
        let (w, h) = (width.to_string(), height.to_string());
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            &w,
            "-y",
            &h,
            command,
        ]);
        tmux
    }

    /// A tmux command against this server.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.server);
        c
    }

    /// Runs tmux with `args`; its stdout. Panics if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names) into the session.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The session's screen now.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.session])
    }

    /// Waits (30 s at most) until the screen holds every one of `needles`; returns it.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {needles:?}:\n{screen}"
            );
            std::thread::sleep(crate::POLL);
        }
    }

    /// Whether the session still runs (its command has not exited).
    pub fn running(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", &self.session])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        match self.cmd().arg("kill-server").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("tmux kill-server: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("tmux kill-server: {e}"),
        }
    }
}
