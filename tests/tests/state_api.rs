//! The state API across a mesh of three real node processes on loopback: `shoal list`,
//! `shoal summary`, `shoal get` and `shoal timeline` asked of each peer agree on a known
//! workload; a peer that does not answer (stopped with SIGSTOP) is named and the answer
//! marked partial; a bad filter gets an error naming the fields; a listing piped into
//! `head` ends quietly.
//!
//! The workload runs in a driver program (this test binary again, attached to node 0).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use shoal::{ActorOptions, TaskOptions};
use shoal_tests::{Mesh, NodeOptions, NodeProcess};

const ENV_SCENARIO: &str = "SHOAL_TEST_STATE_SCENARIO";

/// Tasks run on the node with resource `b`.
const TRIPLES: usize = 20;

#[shoal::remote]
fn triple(x: u64) -> u64 {
    println!("tripling {x}");
    3 * x
}

#[shoal::remote]
fn boom(x: u64) -> u64 {
    eprintln!("about to fail");
    panic!("boom {x}")
}

#[shoal::remote]
fn greet(x: u64) -> u64 {
    println!("hello from an embedded node");
    x
}

#[shoal::remote]
fn say(word: String) -> usize {
    println!("said {word}");
    word.len()
}

/// Words told apart without digits (lines of one pattern but for digits are held back as
/// repeats).
fn words() -> Vec<String> {
    (0..40u8)
        .map(|i| {
            let (a, b) = (b'a' + i / 26, b'a' + i % 26);
            String::from_utf8(vec![a, b, b'x']).unwrap()
        })
        .collect()
}

pub struct Tally {
    n: u64,
}

#[shoal::actor]
impl Tally {
    pub fn new(start: u64) -> Self {
        Tally { n: start }
    }

    pub fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        println!("tally now {}", self.n);
        self.n
    }
}

/// The driver of the workload (a no-op when run as a test of its own).
#[test]
fn driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    assert_eq!(scenario, "workload");
    shoal::init().unwrap();
    let on = |r: &str| TaskOptions::new().num_cpus(1.0).resource(r, 1.0);
    let refs: Vec<_> = (0..TRIPLES as u64)
        .map(|i| triple.options(on("b")).remote(i))
        .collect();
    for (i, r) in refs.into_iter().enumerate() {
        assert_eq!(r.get_blocking().unwrap(), 3 * i as u64);
    }
    assert!(boom
        .options(on("b").max_retries(0))
        .remote(1)
        .get_blocking()
        .is_err());
    // A detached actor on c outlives the driver.
    let tally = Tally::options(
        ActorOptions::new()
            .num_cpus(0.0)
            .resource("c", 1.0)
            .name("tally")
            .detached(true),
    )
    .remote(0);
    for _ in 0..3 {
        tally.add(2).get_blocking().unwrap();
    }
    // A detached placement group, a bundle on each of b and c, outlives it too.
    let group = shoal::placement_group_detached(
        vec![shoal::ResourceSet::cpus(0.5); 2],
        shoal::GroupStrategy::StrictSpread,
    );
    assert!(group.wait(Duration::from_secs(30)).unwrap(), "not placed");
    println!("result done");
}

/// The driver of the waiting scenario: four one-CPU actors on three CPUs; it waits for a
/// call of the fourth until it is killed.
#[test]
fn waiting_driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    assert_eq!(scenario, "waiting");
    shoal::init().unwrap();
    let actors: Vec<_> = (0..4)
        .map(|_| Tally::options(ActorOptions::new().num_cpus(1.0)).remote(0))
        .collect();
    println!("created");
    for a in &actors {
        a.add(1).get_blocking().unwrap();
    }
    println!("all four ran");
}

/// A driver on an embedded node (no daemon answers on its socket).
#[test]
fn embedded_driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    assert_eq!(scenario, "embedded");
    shoal::init().unwrap();
    assert_eq!(greet.remote(5).get_blocking().unwrap(), 5);
    let said: Vec<_> = words().into_iter().map(|w| say.remote(w)).collect();
    assert_eq!(shoal::get_all_blocking(&said, None).unwrap(), vec![3; 40]);
    // The program ends as soon as it has its results.
    println!("result done");
}

/// Runs the driver `entry` in `scenario` on `socket`: its stdout and stderr, once it ended
/// well.
fn driver_in(entry: &str, scenario: &str, socket: &Path, env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", entry, "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, scenario)
        .env("SHOAL_SOCKET", socket)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("result done"),
        "the driver failed: {stdout}\n{stderr}"
    );
    (stdout, stderr)
}

fn driver(socket: &Path) -> (String, String) {
    driver_in("driver_entry", "workload", socket, &[])
}

/// `shoal <args> --socket <node's>`: its stdout, which must succeed.
fn cli(node: &NodeProcess, args: &[&str]) -> String {
    let socket = node.socket();
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push("--socket".as_ref());
    all.push(socket.as_os_str());
    let out = node.run_cli(all).unwrap();
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_json(node: &NodeProcess, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&cli(node, &all)).unwrap()
}

/// Each task's (function, state, peer) in a `list tasks --json` answer, by id.
fn tasks_of(answer: &Value) -> BTreeMap<String, (String, String, String)> {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            let function = s("function");
            let short = function.rsplit("::").next().unwrap_or("").to_string();
            (s("task_id"), (short, s("state"), s("node")))
        })
        .collect()
}

#[test]
fn every_peer_lists_the_same_mesh_and_a_silent_peer_is_named() {
    let name = format!("state-{}", std::process::id());
    let resourced = |r: &str| NodeOptions::new().cpus(1.0).arg("--resource").arg(r);
    let mut mesh = Mesh::start_each(
        [
            NodeOptions::new().cpus(0.0),
            resourced("b=1"),
            resourced("c=1"),
        ]
        .map(|o| o.mesh(&name))
        .to_vec(),
    )
    .unwrap();
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    let ids: Vec<String> = mesh
        .nodes()
        .iter()
        .map(|n| n.peer_id().to_string())
        .collect();

    let (stdout, stderr) = driver(&mesh.node(0).socket());

    // What the tasks wrote on the other peers reached the driver, prefixed, repeats held
    // back and counted (20 lines of one pattern).
    let b16: String = ids[1].chars().take(16).collect();
    let c16: String = ids[2].chars().take(16).collect();
    let tripling: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("(triple pid=") && l.contains(&format!("peer={b16})")))
        .collect();
    let held: u64 = tripling
        .iter()
        .filter_map(|l| {
            let n = l.split("[repeated ").nth(1)?.split('x').next()?;
            n.parse::<u64>().ok()
        })
        .sum();
    assert!(
        tripling.iter().all(|l| l.contains(") tripling ")),
        "{stdout}"
    );
    assert_eq!(
        tripling.len() as u64 + held
            - tripling.iter().filter(|l| l.contains("[repeated")).count() as u64,
        TRIPLES as u64,
        "{stdout}"
    );
    assert!(tripling.len() < TRIPLES, "repeats are collapsed: {stdout}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("(boom pid=") && l.ends_with(") about to fail")),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("(Tally pid=") && l.contains(&format!("peer={c16}) tally now"))),
        "{stdout}"
    );

    // Tasks: every peer tells the same ones, from where they ran.
    let mut seen = None;
    for node in mesh.nodes() {
        let answer = cli_json(node, &["list", "tasks", "--limit", "1000"]);
        assert_eq!(answer["partial"], false, "{answer}");
        assert_eq!(answer["answered"].as_array().unwrap().len(), 3);
        let tasks = tasks_of(&answer);
        let count = |f: &str, state: &str, peer: &str| {
            tasks
                .values()
                .filter(|(fu, s, p)| fu == f && s == state && p == peer)
                .count()
        };
        assert_eq!(count("triple", "FINISHED", &ids[1]), TRIPLES, "{tasks:#?}");
        assert_eq!(count("boom", "FAILED", &ids[1]), 1, "{tasks:#?}");
        assert_eq!(count("Tally", "FINISHED", &ids[2]), 1, "{tasks:#?}");
        assert_eq!(count("add", "FINISHED", &ids[2]), 3, "{tasks:#?}");
        assert_eq!(tasks.len(), TRIPLES + 1 + 1 + 3, "{tasks:#?}");
        if let Some(before) = &seen {
            assert_eq!(before, &tasks);
        }
        seen = Some(tasks);

        // Summaries agree with the rows.
        let summary = cli_json(node, &["summary", "tasks"]);
        let counts: BTreeSet<(String, String, u64)> = summary["summary"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let group = s["group"].as_str().unwrap();
                let short = group.rsplit("::").next().unwrap().to_string();
                (
                    short,
                    s["state"].as_str().unwrap().to_string(),
                    s["count"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String, u64)> = [
            ("Tally", "FINISHED", 1),
            ("add", "FINISHED", 3),
            ("boom", "FAILED", 1),
            ("triple", "FINISHED", TRIPLES as u64),
        ]
        .into_iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c))
        .collect();
        assert_eq!(counts, want, "{summary}");

        // The actor, alive on c; the three peers, each told by itself.
        let actors = cli_json(node, &["list", "actors"]);
        let rows = actors["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{actors}");
        assert_eq!(rows[0]["state"], "ALIVE");
        assert_eq!(rows[0]["name"], "tally");
        assert_eq!(rows[0]["node"], ids[2].as_str());
        assert_eq!(rows[0]["calls_done"], 3);
        let peers = cli_json(node, &["list", "peers"]);
        let told: BTreeSet<&str> = peers["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["node"].as_str().unwrap())
            .collect();
        assert_eq!(told, ids.iter().map(String::as_str).collect());
        // The group, told by the peer that placed it: a bundle on each of b and c.
        let groups = cli_json(node, &["list", "placement-groups"]);
        let rows = groups["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{groups}");
        assert_eq!(rows[0]["state"], "CREATED", "{groups}");
        assert_eq!(rows[0]["node"], ids[0].as_str());
        assert_eq!(rows[0]["strategy"], "STRICT_SPREAD");
        assert_eq!(rows[0]["detached"], "yes");
        let sites: BTreeSet<&str> = rows[0]["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(sites, BTreeSet::from([ids[1].as_str(), ids[2].as_str()]));
    }
    let table = cli(mesh.node(1), &["list", "placement-groups"]);
    assert!(
        table.starts_with("GROUP_ID")
            && table.contains("STRICT_SPREAD")
            && table.contains("{CPU=0.5}"),
        "{table}"
    );

    // Filters, and `get` by a short id.
    let failed = cli_json(mesh.node(2), &["list", "tasks", "--filter", "state=failed"]);
    let rows = failed["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]["error"].as_str().unwrap().contains("boom 1"),
        "{failed}"
    );
    let id = rows[0]["task_id"].as_str().unwrap();
    let text = cli(mesh.node(0), &["get", "task", &id[..12]]);
    assert!(text.contains(id) && text.contains("FAILED"), "{text}");
    let out = mesh
        .node(0)
        .run_cli(
            ["list", "tasks", "--filter", "colour=red", "--socket"]
                .map(String::from)
                .into_iter()
                .chain([mesh.node(0).socket().display().to_string()]),
        )
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no field \"colour\"") && err.contains("function"),
        "{err}"
    );

    // A table never shows two rows with the same id.
    let table = cli(mesh.node(1), &["list", "tasks", "--limit", "1000"]);
    let shown: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() >= 8 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    assert_eq!(shown.len(), TRIPLES + 5, "{table}");
    assert_eq!(shown.iter().collect::<BTreeSet<_>>().len(), shown.len());

    // Piped into `head`: ends quietly.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} list tasks --limit 1000 --socket {} | head -n 1",
            mesh.node(0).bin().display(),
            mesh.node(0).socket().display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success() && !err.contains("panicked"), "{err}");
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);

    // A timeline with every task run, in the Chrome trace format.
    let trace_file = mesh.node(1).dir().join("trace.json");
    let trace_path = trace_file.display().to_string();
    cli(mesh.node(1), &["timeline", "--out", &trace_path]);
    let trace: Value = serde_json::from_slice(&std::fs::read(&trace_file).unwrap()).unwrap();
    let slices: Vec<&Value> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    let triples = slices
        .iter()
        .filter(|e| e["name"].as_str().unwrap().ends_with("::triple"))
        .count();
    assert_eq!(triples, TRIPLES, "{trace}");
    assert!(slices
        .iter()
        .all(|e| e["ts"].as_u64().unwrap() > 0 && e["dur"].is_u64()));

    // The lines stay at the peers where they were written: `shoal logs` from any peer.
    let boom_id = failed["rows"][0]["task_id"].as_str().unwrap().to_string();
    let text = cli(mesh.node(0), &["logs", "--task", &boom_id[..12]]);
    // Its line, then its panic's message: all the task's, nothing else.
    assert!(
        text.starts_with("(boom pid=") && text.lines().next().unwrap().ends_with(") about to fail"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with("(boom pid=")), "{text}");
    assert!(text.contains("boom 1"), "{text}");
    let text = cli(mesh.node(2), &["logs", "--peer", &ids[1]]);
    let lines = text.lines().filter(|l| l.contains(") tripling ")).count();
    assert_eq!(lines, TRIPLES, "{text}");
    let json = cli(mesh.node(1), &["logs", "--peer", &ids[2], "--json"]);
    let rows: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{json}");
    assert!(rows
        .iter()
        .all(|r| r["text"].as_str().unwrap().starts_with("tally now")));

    // A stopped peer does not answer: the answer names it and is marked partial.
    mesh.node_mut(2).signal(libc::SIGSTOP).unwrap();
    let answer = cli_json(mesh.node(0), &["list", "tasks", "--timeout", "1"]);
    mesh.node_mut(2).signal(libc::SIGCONT).unwrap();
    assert_eq!(answer["partial"], true, "{answer}");
    assert_eq!(answer["missing"], serde_json::json!([ids[2]]));
    let tasks = tasks_of(&answer);
    assert!(tasks.values().all(|(_, _, p)| p != &ids[2]), "{tasks:#?}");
    assert!(tasks.values().any(|(_, _, p)| p == &ids[1]));
}

#[test]
fn work_no_peer_has_room_for_shows_in_every_status_and_warns_its_program() {
    use std::io::BufRead;

    let name = format!("waiting-{}", std::process::id());
    let warned_soon = NodeOptions::new().cpus(1.0).arg("--wait-warning").arg("1");
    let mesh = Mesh::start_each(
        [
            warned_soon,
            NodeOptions::new().cpus(1.0),
            NodeOptions::new().cpus(1.0),
        ]
        .map(|o| o.mesh(&name))
        .to_vec(),
    )
    .unwrap();
    mesh.wait_converged(Duration::from_secs(30)).unwrap();

    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "waiting_driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "waiting")
        .env("SHOAL_SOCKET", mesh.node(0).socket())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut driver =
        shoal_tests::process::KillOnDrop::spawn("waiting driver", &mut command).unwrap();
    let stderr = driver.child_mut().stderr.take().unwrap();
    // The program is warned once its fourth actor has waited a second.
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let warning = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a warning within 30 s");
        if line.contains("(shoal) warning:") {
            break line;
        }
    };
    assert!(
        warning.contains("1 actor waited") && warning.contains("CPU=1"),
        "{warning}"
    );
    // Once it has waited five seconds, every peer's status shows it, with why.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cli(mesh.node(0), &["status"]).contains("waiting   1 tasks and actors") {
        assert!(
            std::time::Instant::now() < deadline,
            "not shown within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for node in mesh.nodes() {
        let text = cli(node, &["status"]);
        let section: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("waiting"))
            .collect();
        assert!(
            section
                .first()
                .is_some_and(|l| l.contains("waiting   1 tasks and actors")),
            "{text}"
        );
        assert!(
            section
                .iter()
                .any(|l| l.contains("ACTOR_CREATION_TASK") && l.contains("needs CPU=1")),
            "{text}"
        );
        let json = cli_json(node, &["status"]);
        assert_eq!(
            json["waiting"]["tasks"].as_array().unwrap().len(),
            1,
            "{json}"
        );
    }
    driver.kill().unwrap();
}

#[test]
fn an_embedded_node_prefixes_its_workers_output_and_honours_rust_log() {
    let dir = shoal_tests::process::TestDir::new("state-embedded");
    let socket = dir.join("nobody.sock");
    let (stdout, stderr) = driver_in(
        "embedded_driver_entry",
        "embedded",
        &socket,
        &[("RUST_LOG", "shoal_node=info")],
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("(greet pid=") && l.ends_with(") hello from an embedded node")),
        "{stdout}"
    );
    // What a task printed reached the program before its result did.
    for word in words() {
        let said = format!(") said {word}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("(say pid=") && l.ends_with(&said)),
            "{word}: {stdout}"
        );
    }
    assert!(stderr.contains("node started"), "{stderr}");
}
