//! Real `shoal node` processes on loopback (ephemeral ports, mDNS off) forming meshes: they
//! converge, a SIGKILLed peer leaves every view within the bound (with either membership:
//! load reports, or SWIM), a restarted one rejoins with the same peer id, a peer of another mesh never shows up, and `scripts/mesh` starts
//! and stops a mesh. Everything waits by polling `shoal status --json` with a deadline.
//!
//! Needs the `shoal` binary beside the test (`cargo test --workspace`, or
//! `cargo build -p shoal-node --bin shoal` first). Run with `--nocapture` to see the measured
//! times.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{
    free_tcp_port, pid_alive, run_with_timeout, shoal_bin, view, wait_for, Mesh, NodeOptions,
    NodeProcess,
};

/// The failure detection bound the issue asks for, with the default 3 s failure timeout.
const DETECTION_BOUND: Duration = Duration::from_secs(6);

/// Generous: several tests start meshes at once on a small machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A mesh name no other test (or a mesh of the user's) shares.
fn mesh_name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// The peer ids in a `peers --json` answer: a list of peers (or an object with a `peers`
/// list), each with a `peer_id`.
fn peer_ids_of_peers_json(peers: &Value) -> BTreeSet<String> {
    let list = peers
        .as_array()
        .or_else(|| peers["peers"].as_array())
        .unwrap_or_else(|| panic!("`shoal peers --json` is not a list of peers: {peers}"));
    list.iter()
        .map(|p| {
            p["peer_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a peer without a string `peer_id`: {p}"))
                .to_owned()
        })
        .collect()
}

/// Whether `status` lists `n` peers, each with the resources of its load report (every node
/// here has `--cpus 1`).
fn all_reported(status: &Value, n: usize) -> bool {
    status["peers"].as_array().is_some_and(|peers| {
        peers.len() == n && peers.iter().all(|p| p["resources"]["total"]["CPU"] == 1.0)
    })
}

/// Checks the documented fields of `status --json` and `peers --json` of `node`, which sees
/// `others`.
fn check_documented_fields(node: &NodeProcess, mesh: &str, others: &BTreeSet<String>) {
    let s = node.status();
    let id = s["peer_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no `peer_id`: {s}"));
    assert_eq!(id, node.peer_id());
    assert_eq!(s["mesh"], mesh, "{s}");
    assert_eq!(s["pid"], node.pid(), "{s}");
    let addrs = s["listen_addrs"]
        .as_array()
        .expect("`listen_addrs` is a list");
    assert!(!addrs.is_empty());
    for a in addrs {
        let a = a.as_str().expect("an address is a string");
        assert!(
            a.ends_with(&format!("/p2p/{id}")),
            "{a} does not end in /p2p/<peer id>"
        );
        assert!(!a.contains("/tcp/0/"), "{a}: not the bound port");
    }
    let peers = s["peers"].as_array().expect("`peers` is a list");
    assert_eq!(&view(&s), others, "{s}");
    assert_eq!(peers.len(), others.len(), "one entry per peer: {s}");
    for p in peers {
        assert!(p["peer_id"].is_string(), "{p}");
        assert_ne!(p["peer_id"], id, "a node is not its own peer: {p}");
        assert!(p["addrs"].is_array(), "`addrs`: {p}");
        assert!(
            p["resources"]["total"].is_object(),
            "`resources.total`: {p}"
        );
        assert!(p["resources"]["free"].is_object(), "`resources.free`: {p}");
        assert_eq!(
            p["resources"]["total"]["CPU"], 1.0,
            "each node has --cpus 1: {p}"
        );
        assert!(p["queued"].is_u64(), "`queued`: {p}");
        assert!(p["running"].is_u64(), "`running`: {p}");
        assert!(p["store"]["capacity"].is_u64(), "`store.capacity`: {p}");
        assert!(p["store"]["used"].is_u64(), "`store.used`: {p}");
        assert_eq!(p["store"]["capacity"], 64u64 << 20, "--store-bytes: {p}");
        assert!(p["last_heard_ms"].is_u64(), "`last_heard_ms`: {p}");
        assert!(
            p.get("rtt_us").is_some_and(|r| r.is_null() || r.is_u64()),
            "`rtt_us` (a number or null): {p}"
        );
    }
    let listed = node.try_peers().unwrap();
    assert_eq!(&peer_ids_of_peers_json(&listed), others, "{listed}");
}

/// SIGKILLs node `victim` and waits until it has left every other view, which must happen
/// within `bound`.
fn kill_and_time(mesh: &mut Mesh, victim: usize, bound: Duration) {
    let id = mesh.node(victim).peer_id().to_owned();
    let killed_at = Instant::now();
    mesh.node_mut(victim).kill_9().unwrap();
    mesh.wait_gone(&id, Duration::from_secs(20)).unwrap();
    let detected = killed_at.elapsed();
    println!(
        "a SIGKILLed peer left every view in {:.3} s",
        detected.as_secs_f64()
    );
    assert!(
        detected < bound,
        "failure detection took {detected:?}, bound {bound:?}"
    );
}

#[test]
fn five_nodes_converge_and_a_killed_peer_leaves_and_rejoins() {
    let name = mesh_name("five");
    let mut mesh = Mesh::start(5, &name).unwrap();
    let took = mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();
    println!(
        "5 processes: started (socket up, listening) in {:.3} s, then converged in {:.3} s",
        mesh.startup_time().as_secs_f64(),
        took.as_secs_f64()
    );

    // A peer enters a view when it is admitted; its load report follows by gossip.
    let (_, reports) = wait_for(Duration::from_secs(20), "every peer's load report", || {
        Ok(mesh
            .nodes()
            .iter()
            .all(|n| n.try_status().is_ok_and(|s| all_reported(&s, 4)))
            .then_some(()))
    })
    .unwrap();
    println!(
        "every node had every peer's load report {:.3} s after that",
        reports.as_secs_f64()
    );

    let ids: Vec<String> = mesh
        .nodes()
        .iter()
        .map(|n| n.peer_id().to_owned())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        5,
        "distinct peer ids: {ids:?}"
    );
    for (i, node) in mesh.nodes().iter().enumerate() {
        let others = ids.iter().enumerate().filter(|(j, _)| *j != i);
        check_documented_fields(node, &name, &others.map(|(_, id)| id.clone()).collect());
    }

    // SIGKILL one (not the bootstrap node): it leaves every other view within the bound.
    let victim = 3;
    let victim_id = ids[victim].clone();
    kill_and_time(&mut mesh, victim, DETECTION_BOUND);
    // The others still see each other.
    mesh.wait_converged(Duration::from_secs(5)).unwrap();

    // Restarted with the same data directory: the same peer id, in every view again.
    let restarted_at = Instant::now();
    mesh.node_mut(victim).restart().unwrap();
    assert_eq!(
        mesh.node(victim).peer_id(),
        victim_id,
        "same data dir, same identity"
    );
    mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();
    println!(
        "the restarted peer was back in every view (and saw every peer) {:.3} s after its restart",
        restarted_at.elapsed().as_secs_f64()
    );
}

/// With SWIM running membership, a killed peer's connections close, the peers that held
/// them probe it at once, and it is declared dead after the least suspicion: well under
/// the reports' bound.
const SWIM_DETECTION_BOUND: Duration = Duration::from_secs(5);

/// Membership's figures in a `status --json` object: members up, suspected.
fn members_up(status: &Value) -> Option<(u64, u64)> {
    let m = &status["membership"];
    Some((m["members_up"].as_u64()?, m["suspected"].as_u64()?))
}

#[test]
fn under_swim_eight_nodes_converge_and_a_killed_peer_leaves_within_five_seconds_and_rejoins() {
    let name = mesh_name("swim");
    let options = NodeOptions::new()
        .mesh(&name)
        .args(["--membership", "swim"]);
    let mut mesh = Mesh::start_with(8, &options, None).unwrap();
    let took = mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();
    println!(
        "8 processes under SWIM converged {:.3} s after they listened",
        took.as_secs_f64()
    );
    let (_, waited) = wait_for(
        Duration::from_secs(20),
        "every node counts 8 members up",
        || {
            Ok(mesh
                .nodes()
                .iter()
                .all(|n| {
                    n.try_status()
                        .is_ok_and(|s| members_up(&s).is_some_and(|(up, _)| up == 8))
                })
                .then_some(()))
        },
    )
    .unwrap();
    println!(
        "membership counted 8 up everywhere {:.3} s later",
        waited.as_secs_f64()
    );

    let victim = 5;
    let victim_id = mesh.node(victim).peer_id().to_owned();
    kill_and_time(&mut mesh, victim, SWIM_DETECTION_BOUND);
    // Nobody else was written off, and membership agrees with the views.
    mesh.wait_converged(Duration::from_secs(5)).unwrap();
    for (i, node) in mesh.nodes().iter().enumerate() {
        if i != victim {
            let status = node.status();
            let (up, _) = members_up(&status).expect("membership in the status");
            assert_eq!(up, 7, "node {i}: {}", status["membership"]);
        }
    }

    // Back with the same identity and a later incarnation: in every view again.
    let restarted_at = Instant::now();
    mesh.node_mut(victim).restart().unwrap();
    assert_eq!(mesh.node(victim).peer_id(), victim_id);
    mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();
    println!(
        "the restarted peer was back in every view {:.3} s after its restart",
        restarted_at.elapsed().as_secs_f64()
    );
}

#[test]
fn a_restarted_bootstrap_peer_rejoins() {
    // Node 0 was given no `--peer`: once restarted, it is back only if the others find it
    // again (they were given its address) or it remembers them. It listens on the same
    // address as before, as a bootstrap node of a real mesh would.
    let port = free_tcp_port().unwrap();
    let options = NodeOptions::new().mesh(mesh_name("bootstrap"));
    let mut first = options.clone();
    first.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
    let node0 = NodeProcess::start(first).unwrap();
    let addr = node0.listen_addr().to_owned();
    let mut nodes = vec![node0];
    for _ in 0..2 {
        nodes.push(NodeProcess::start(options.clone().peer(addr.clone())).unwrap());
    }
    let mut mesh = Mesh::from_nodes(nodes);
    mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();

    let id = mesh.node(0).peer_id().to_owned();
    let killed_at = Instant::now();
    mesh.node_mut(0).kill_9().unwrap();
    mesh.wait_gone(&id, Duration::from_secs(20)).unwrap();
    println!(
        "the SIGKILLed bootstrap peer left every view in {:.3} s",
        killed_at.elapsed().as_secs_f64()
    );
    let restarted_at = Instant::now();
    mesh.node_mut(0).restart().unwrap();
    assert_eq!(mesh.node(0).peer_id(), id);
    assert_eq!(mesh.node(0).listen_addr(), addr);
    mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();
    println!(
        "the restarted bootstrap peer was back in every view {:.3} s after its restart",
        restarted_at.elapsed().as_secs_f64()
    );
}

#[test]
fn a_peer_of_another_mesh_never_appears() {
    let mesh = Mesh::start(3, &mesh_name("first")).unwrap();
    mesh.wait_converged(CONVERGE_TIMEOUT).unwrap();
    let first: BTreeSet<String> = mesh
        .nodes()
        .iter()
        .map(|n| n.peer_id().to_owned())
        .collect();

    // Given the addresses of two peers of the first mesh, and so connecting to them.
    let stranger = NodeProcess::start(
        NodeOptions::new()
            .mesh(mesh_name("other"))
            .peer(mesh.node(0).listen_addr())
            .peer(mesh.node(1).listen_addr()),
    )
    .unwrap();
    let stranger_id = stranger.peer_id().to_owned();
    assert!(!first.contains(&stranger_id));
    // It reaches them: the peers it dials log its peer id (at the default log level).
    let met = || {
        std::env::var_os("RUST_LOG").is_some()
            || mesh.nodes()[..2].iter().any(|n| {
                std::fs::read_to_string(n.log_path()).is_ok_and(|l| l.contains(&stranger_id))
            })
    };

    // Watch both sides from the start, until the stranger has been met, for longer than the
    // failure timeout (3 s: several keep-alive rounds of gossip), and until the first mesh
    // has been seen converged at least twice.
    let watch = Duration::from_millis(3500);
    let start = Instant::now();
    let mut converged_seen = 0;
    let mut polls = 0;
    let mut contact = false;
    while start.elapsed() < watch || converged_seen < 2 || !contact {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first mesh fell apart (converged in {converged_seen} of {polls} polls), or \
             never met the stranger (met: {contact})"
        );
        polls += 1;
        let mut all_see_all = true;
        for node in mesh.nodes() {
            let v = node.view().unwrap();
            assert!(
                !v.contains(&stranger_id),
                "node {} of mesh {} sees the peer of another mesh: {v:?}",
                node.peer_id(),
                node.mesh()
            );
            all_see_all &= first
                .iter()
                .filter(|id| *id != node.peer_id())
                .all(|id| v.contains(id));
        }
        converged_seen += usize::from(all_see_all);
        let seen_by_stranger = stranger.view().unwrap();
        assert!(
            seen_by_stranger.is_empty(),
            "the peer of mesh {} sees {seen_by_stranger:?}",
            stranger.mesh()
        );
        contact = contact || met();
        std::thread::sleep(shoal_tests::POLL);
    }
    println!(
        "a peer of another mesh stayed out of every view for {:.1} s ({polls} polls, first mesh \
         converged in {converged_seen} of them)",
        start.elapsed().as_secs_f64()
    );
}

/// The workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `scripts/mesh <args>` through bash with the `shoal-mesh` built for this test (so
/// nothing is built) and `TMPDIR` set to `tmp`.
fn script(tmp: &Path, args: &[&str]) -> std::process::Output {
    let root = workspace_root();
    let mut command = Command::new("bash");
    command
        .arg(root.join("scripts/mesh"))
        .args(args)
        .current_dir(&root)
        .env("TMPDIR", tmp)
        .env("SHOAL_MESH_BIN", env!("CARGO_BIN_EXE_shoal-mesh"))
        .env("SHOAL_BIN", shoal_bin().unwrap());
    run_with_timeout(&mut command, Duration::from_secs(60)).unwrap()
}

fn stdout_of(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs `scripts/mesh down` in `tmp` when dropped, so a failing test leaves no nodes behind,
/// then removes `tmp`.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = script(&self.0, &["down"]);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn scripts_mesh_up_status_down() {
    // A private TMPDIR: its own state file, whatever mesh the user may have up.
    let tmp = std::env::temp_dir().join(format!("shoal-mt-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp = tmp.canonicalize().unwrap();
    let _cleanup = DownOnDrop(tmp.clone());

    let help = script(&tmp, &[]);
    assert!(!help.status.success(), "no arguments: usage, and a failure");
    assert!(String::from_utf8_lossy(&help.stdout).contains("scripts/mesh up N"));

    let up = stdout_of(&script(&tmp, &["up", "3", "--mesh", "scripted"]), "up 3");
    assert_eq!(
        up.matches("SHOAL_SOCKET=").count(),
        4,
        "one per node, and an example:\n{up}"
    );

    let status = stdout_of(&script(&tmp, &["status", "--json"]), "status --json");
    let list: Value = serde_json::from_str(&status).unwrap();
    let list = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"));
    assert_eq!(list.len(), 3, "{status}");
    let mut ids = BTreeSet::new();
    let mut pids = Vec::new();
    for node in list {
        let pid = node["pid"].as_u64().expect("pid") as u32;
        let socket = PathBuf::from(node["socket"].as_str().expect("socket"));
        let id = node["peer_id"].as_str().expect("peer_id").to_owned();
        let addrs = node["addrs"].as_array().expect("addrs");
        assert!(!addrs.is_empty(), "{node}");
        for a in addrs {
            assert!(
                a.as_str().unwrap().ends_with(&format!("/p2p/{id}")),
                "{node}"
            );
        }
        assert_eq!(node["alive"], true, "{node}");
        assert_eq!(node["peers"], 2, "{node}");
        assert!(
            up.contains(&format!("SHOAL_SOCKET={}", socket.display())),
            "{up}"
        );
        // The socket is that node's, and it is of the mesh asked for.
        let s = shoal_tests::status_json(&socket).unwrap();
        assert_eq!(s["peer_id"], id);
        assert_eq!(s["pid"], pid);
        assert_eq!(s["mesh"], "scripted");
        assert!(pid_alive(pid));
        ids.insert(id);
        pids.push(pid);
    }
    assert_eq!(ids.len(), 3, "distinct peer ids: {status}");
    let text = stdout_of(&script(&tmp, &["status"]), "status");
    for id in &ids {
        assert!(text.contains(id.as_str()), "{text}");
    }

    // A second `up` refuses while the mesh is up.
    let again = script(&tmp, &["up", "2"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already up"), "{err}");

    let down = stdout_of(&script(&tmp, &["down"]), "down");
    for pid in &pids {
        assert!(!pid_alive(*pid), "pid {pid} still runs after down:\n{down}");
    }
    let uid = unsafe { libc::getuid() };
    let state_dir = tmp.join(format!("shoal-mesh-{uid}"));
    assert!(!state_dir.join("state.json").exists(), "{down}");
    for node in list {
        assert!(!Path::new(node["dir"].as_str().unwrap()).exists(), "{node}");
    }
    let after = stdout_of(&script(&tmp, &["status", "--json"]), "status after down");
    assert_eq!(after.trim(), "[]");
}

#[test]
fn scripts_mesh_down_never_signals_a_recycled_pid() {
    let tmp = std::env::temp_dir().join(format!("shoal-mt-recycled-{}", std::process::id()));
    let uid = unsafe { libc::getuid() };
    let state_dir = tmp.join(format!("shoal-mesh-{uid}"));
    std::fs::create_dir_all(state_dir.join("node-0")).unwrap();
    let tmp = tmp.canonicalize().unwrap();
    let _cleanup = DownOnDrop(tmp.clone());
    // A state file whose pid now belongs to another program (ours: a `sleep`).
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let state = serde_json::json!({
        "mesh": "default",
        "nodes": [{
            "pid": other.id(),
            "socket": state_dir.join("node-0/node.sock"),
            "dir": state_dir.join("node-0"),
            "log": state_dir.join("node-0/node.log"),
            "mesh": "default",
            "peer_id": "12D3KooWGone",
            "addrs": [],
        }],
    });
    std::fs::write(state_dir.join("state.json"), state.to_string()).unwrap();

    let status = stdout_of(&script(&tmp, &["status", "--json"]), "status --json");
    let list: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(list[0]["alive"], false, "{status}");
    let down = stdout_of(&script(&tmp, &["down"]), "down");
    assert!(down.contains("left alone"), "{down}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "down signalled another program"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    assert!(!state_dir.join("state.json").exists());
    assert!(!state_dir.join("node-0").exists());
}

#[test]
fn the_node_guard_kills_its_child_and_removes_its_directory() {
    let node = NodeProcess::start(NodeOptions::new().mesh(mesh_name("guard"))).unwrap();
    let (pid, dir) = (node.pid(), node.dir().to_owned());
    assert!(dir.join("data").is_dir() && node.socket().exists());
    drop(node);
    // Reaped by the guard: gone, not a zombie.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn a_node_that_cannot_start_is_an_error_quoting_its_log() {
    let err = NodeProcess::start(NodeOptions::new().arg("--no-such-flag")).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("exited during start-up"), "{err}");
    assert!(err.contains("--no-such-flag"), "the log's tail: {err}");
}
