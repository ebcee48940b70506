//! Who may use a node on this machine, with real processes of other uids: the socket is
//! mode 0600 in a private directory, and the node checks each connection's credentials
//! (`SO_PEERCRED`) before it reads a byte; a runtime or spill directory planted by another
//! user is refused; connections are bounded per uid and idle ones cannot crowd out new ones.
//!
//! The tests that switch uids need root (CI runs as root); as anyone else they say so and
//! pass without checking.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shoal_protocol::{ToClient, ToNode};
use shoal_tests::{
    cli_hello, expect_rejected_and_closed, run_with_timeout, wait_for, KillOnDrop, NodeOptions,
    NodeProcess, RawClient, TestDir, DEADLINE,
};

/// `nobody` and its group `nogroup`.
const NOBODY: u32 = 65534;
/// `daemon`, a uid that is neither the node's nor root.
const DAEMON: u32 = 1;

fn shoal() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shoal"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this test can run: it needs root to act as other users.
fn needs_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped, needs root to run processes as other users");
    }
    is_root()
}

/// The variables a node or a client would read in place of their flags.
const SHOAL_ENV: [&str; 6] = [
    "SHOAL_SOCKET",
    "SHOAL_STORE_BYTES",
    "SHOAL_STORE_DIR",
    "SHOAL_SPILL_DIR",
    "SHOAL_MESH",
    "SHOAL_DATA_DIR",
];

/// `shoal status --json --socket <socket>` as `uid`:`gid` (no supplementary groups).
fn status_as(socket: &Path, uid: u32, gid: u32) -> Output {
    let mut command = Command::new(shoal());
    command
        .arg("status")
        .arg("--json")
        .arg("--socket")
        .arg(socket)
        .env_remove("SHOAL_SOCKET")
        .uid(uid)
        .gid(gid);
    run_with_timeout(&mut command, DEADLINE).expect("run shoal status")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// A node of this package's `shoal`, logging at `info`, with `extra` arguments.
fn start_node(extra: &[&str]) -> NodeProcess {
    NodeProcess::start(
        NodeOptions::new()
            .bin(shoal())
            .env("RUST_LOG", "info")
            .args(extra),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `shoal node <args>` (no mesh) with `env`, as `uid`:`gid`, logging to `log`.
fn node_command(args: &[&std::ffi::OsStr], env: &[(&str, &Path)], log: &Path) -> Command {
    let mut command = Command::new(shoal());
    command.arg("node").arg("--no-mesh").args(args);
    for var in SHOAL_ENV.iter().chain(&["XDG_RUNTIME_DIR", "TMPDIR"]) {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let file = std::fs::File::create(log).expect("node log");
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file);
    command
}

/// Waits until `socket` answers `shoal status` (as this process's user).
fn wait_answering(socket: &Path, node: &mut KillOnDrop, log: &Path) {
    let waited = wait_for(DEADLINE * 3, "the node to answer", || {
        if let Some(status) = node.try_wait()? {
            anyhow::bail!("the node exited ({status}): {}", read(log));
        }
        let out = status_as(socket, current_uid(), current_gid());
        Ok(out.status.success().then_some(()))
    });
    if let Err(e) = waited {
        panic!("{e:#}\n{}", read(log));
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn current_gid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_process_of_another_uid_cannot_attach() {
    if !needs_root("a_process_of_another_uid_cannot_attach") {
        return;
    }
    let node = start_node(&[]);
    let socket = node.socket();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "the socket is this user's alone"
    );
    assert_eq!(meta.uid(), current_uid());
    // The node's own user (root here) attaches.
    assert!(status_as(&socket, 0, 0).status.success());

    // The kernel keeps `nobody` out: the socket is 0600.
    let out = status_as(&socket, NOBODY, NOBODY);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    // With the file's mode opened up (a mistake, or a way in the file's mode does not cover),
    // the node's own check still refuses it, says why, and logs it.
    chmod(&socket, 0o666);
    let out = status_as(&socket, NOBODY, NOBODY);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("uid 65534 may not use this node"),
        "{}",
        stderr(&out)
    );
    node.expect_log(&["refused a connection", "uid=65534"]);
    // The node keeps serving its own user.
    node.client().status(1);
    assert!(status_as(&socket, 0, 0).status.success());
}

#[test]
fn the_node_user_root_and_the_socket_group_attach_and_nobody_else() {
    if !needs_root("the_node_user_root_and_the_socket_group_attach_and_nobody_else") {
        return;
    }
    // A node running as `nobody`, with its group `nogroup` as the socket group.
    let dir = TestDir::new("shoal-it-access");
    chown(dir.path(), NOBODY, NOBODY);
    let socket = dir.join("node.sock");
    let log = dir.join("node.log");
    let args: Vec<PathBuf> = vec![
        "--socket".into(),
        socket.clone(),
        "--store-dir".into(),
        dir.join("store"),
        "--spill-dir".into(),
        dir.join("spill"),
        "--store-bytes".into(),
        "67108864".into(),
        "--cpus".into(),
        "1".into(),
        "--socket-group".into(),
        "nogroup".into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut command = node_command(&args, &[], &log);
    command.uid(NOBODY).gid(NOBODY);
    let mut node = KillOnDrop::spawn("node as nobody", &mut command).unwrap();
    wait_answering(&socket, &mut node, &log);

    // The socket: 0660, the group's. The store directory: the group may reach files in it
    // (to write and map objects) but not list it; the spill directory is the node's alone.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o660, NOBODY, NOBODY)
    );
    let store = only_entry(&dir.join("store"));
    assert_eq!(mode(&store), 0o2710);
    assert_eq!(std::fs::metadata(&store).unwrap().gid(), NOBODY);
    assert_eq!(mode(&only_entry(&dir.join("spill"))), 0o700);

    // The node's own uid, root, and a member of the group attach.
    for (uid, gid) in [(NOBODY, NOBODY), (0, 0), (DAEMON, NOBODY)] {
        let out = status_as(&socket, uid, gid);
        assert!(out.status.success(), "{uid}:{gid}: {}", stderr(&out));
    }
    // Anyone else does not: the kernel refuses first, and past it the node does.
    let out = status_as(&socket, DAEMON, DAEMON);
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    chmod(&socket, 0o666);
    let out = status_as(&socket, DAEMON, DAEMON);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("uid 1 may not use this node"),
        "{}",
        stderr(&out)
    );
    wait_for(DEADLINE, "the refusal in the log", || {
        Ok(read(&log)
            .lines()
            .any(|l| l.contains("refused a connection") && l.contains("uid=1 "))
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    // And the node serves on.
    assert!(status_as(&socket, NOBODY, NOBODY).status.success());
}

/// The one entry of `dir`.
fn only_entry(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

/// Runs `shoal node` (no mesh, store and spill in `dir` unless `spill` says otherwise) with
/// `env` to its end, as it refuses to start; returns its output.
fn refused_start(dir: &TestDir, env: &[(&str, &Path)], extra: &[&str]) -> Output {
    let mut args: Vec<PathBuf> = vec!["--store-dir".into(), dir.join("store")];
    args.extend(extra.iter().map(PathBuf::from));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let log = dir.join("refused.log");
    let mut command = node_command(&args, env, &log);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = run_with_timeout(&mut command, DEADLINE * 3).expect("run shoal node");
    assert!(
        !out.status.success(),
        "the node started: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_precreated_runtime_directory_of_another_user_is_refused() {
    if !needs_root("a_precreated_runtime_directory_of_another_user_is_refused") {
        return;
    }
    let dir = TestDir::new("shoal-it-planted");
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    let planted = run.join("shoal");
    std::fs::create_dir(&planted).unwrap();
    chown(&planted, NOBODY, NOBODY);
    chmod(&planted, 0o777);
    let env = [("XDG_RUNTIME_DIR", run.as_path())];
    let spill = dir.join("spill");
    let spill_arg = spill.to_str().unwrap();

    // Another user's directory where the socket would go: refused, nothing made in it.
    let out = refused_start(&dir, &env, &["--spill-dir", spill_arg]);
    let err = stderr(&out);
    assert!(err.contains("is owned by uid 65534"), "{err}");
    assert!(err.contains(planted.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0);

    // This user's, but writable by others: refused too.
    chown(&planted, 0, 0);
    let out = refused_start(&dir, &env, &["--spill-dir", spill_arg]);
    assert!(
        stderr(&out).contains("users other than its owner may write to it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0);

    // This user's and only readable by others: taken, and made 0700; the socket is 0600.
    chmod(&planted, 0o755);
    let log = dir.join("node.log");
    let args: Vec<PathBuf> = vec![
        "--store-dir".into(),
        dir.join("store"),
        "--spill-dir".into(),
        spill.clone(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut command = node_command(&args, &env, &log);
    let mut node = KillOnDrop::spawn("node", &mut command).unwrap();
    let socket = planted.join("node.sock");
    wait_answering(&socket, &mut node, &log);
    assert_eq!(mode(&planted), 0o700);
    assert_eq!(mode(&socket), 0o600);
    node.kill().unwrap();

    // The default spill directory (in the temporary directory) planted by another user:
    // refused as well.
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let planted_spill = tmp.join(format!("shoal-spill-{}", current_uid()));
    std::fs::create_dir(&planted_spill).unwrap();
    chown(&planted_spill, NOBODY, NOBODY);
    let socket = dir.join("other.sock");
    let out = refused_start(
        &dir,
        &[("TMPDIR", tmp.as_path())],
        &["--socket", socket.to_str().unwrap()],
    );
    assert!(
        stderr(&out).contains("is owned by uid 65534"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stale_directories_of_other_users_are_left_alone() {
    if !needs_root("stale_directories_of_other_users_are_left_alone") {
        return;
    }
    let dir = TestDir::new("shoal-it-stale");
    let store = dir.join("store");
    std::fs::create_dir(&store).unwrap();
    // Named as a dead node's store directory, but another user's: not ours to remove.
    let theirs = store.join("shoal-2147483646-0000");
    let ours = store.join("shoal-2147483645-0000");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::create_dir(&ours).unwrap();
    chown(&theirs, NOBODY, NOBODY);
    let node = NodeProcess::start(
        NodeOptions::new()
            .bin(shoal())
            .env("RUST_LOG", "info")
            .store_dir(&store),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(theirs.exists(), "another user's directory was removed");
    assert!(!ours.exists(), "this user's stale directory was kept");
    drop(node);
}

#[test]
fn attached_connections_are_bounded_per_uid_with_a_reason() {
    let node = start_node(&["--max-clients-per-uid", "2"]);
    let a = node.client();
    let _b = node.client();
    let mut c = RawClient::connect(&node.socket());
    c.send(&ToNode::Hello(cli_hello()));
    let reason = expect_rejected_and_closed(&mut c, false);
    assert!(
        reason.contains("too many connections from uid") && reason.contains("at most 2"),
        "{reason}"
    );
    node.expect_log(&["connection refused", "too many connections"]);
    // A slot given back is free again.
    drop(a);
    wait_for(DEADLINE, "a slot to be given back", || {
        let mut d = RawClient::connect(&node.socket());
        d.send(&ToNode::Hello(cli_hello()));
        Ok(matches!(d.recv(), Ok(Some(ToClient::Welcome { .. }))).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn idle_connections_give_way_to_new_ones_and_time_out() {
    let node = start_node(&[]);
    let socket = node.socket();
    // More idle connections than one uid may have waiting: the oldest are closed, with the
    // reason, to make room.
    let mut idle: Vec<RawClient> = (0..300).map(|_| RawClient::connect(&socket)).collect();
    let mut first = idle.remove(0);
    first.set_timeout(DEADLINE);
    let reason = expect_rejected_and_closed(&mut first, false);
    assert!(reason.contains("waiting to say Hello"), "{reason}");
    node.expect_log(&["too many connections waiting to say Hello"]);
    // A new client gets in at once.
    node.client().status(1);
    // The newest idle one is closed when its time to say Hello is up.
    let mut last = idle.pop().expect("idle connections");
    last.set_timeout(Duration::from_secs(10));
    let reason = expect_rejected_and_closed(&mut last, false);
    assert!(
        reason.contains("no Hello within the time limit"),
        "{reason}"
    );
}
