//! Prometheus metrics (`shoal node --metrics ADDR`) scraped from a mesh of three real node
//! processes on loopback, checked against a known workload: the tasks each node ran, the
//! bytes pulled and served, the tasks sent to peers. And the endpoint's manners: malformed,
//! wrong and oversized requests get a typed HTTP error, and the node keeps serving.
//!
//! The workload runs in a driver program (this test binary again, attached to node 0).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal::{Bytes, ObjectRef, TaskOptions};
use shoal_tests::{Mesh, NodeOptions, NodeProcess};

const ENV_SCENARIO: &str = "SHOAL_TEST_METRICS_SCENARIO";

/// Small tasks run on the node with resource `b`.
const SMALL_TASKS: u64 = 20;

/// The large object's size.
const BIG: u64 = 8 << 20;

#[shoal::remote]
fn triple(x: u64) -> u64 {
    3 * x
}

#[shoal::remote]
fn make_bytes(n: u64) -> Bytes {
    Bytes::from(vec![7u8; n as usize])
}

#[shoal::remote]
fn length(b: Bytes) -> u64 {
    b.len() as u64
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
    // SMALL_TASKS on b.
    let refs: Vec<_> = (0..SMALL_TASKS)
        .map(|i| triple.options(on("b")).remote(i))
        .collect();
    for (i, r) in refs.into_iter().enumerate() {
        assert_eq!(r.get_blocking().unwrap(), 3 * i as u64);
    }
    // A large object made on b, read on c (c pulls it from b) and by the driver (its node
    // pulls it from b or c).
    let made: ObjectRef<Bytes> = make_bytes.options(on("b")).remote(BIG);
    assert_eq!(
        length
            .options(on("c"))
            .remote(&made)
            .get_blocking()
            .unwrap(),
        BIG
    );
    assert_eq!(made.get_blocking().unwrap().len() as u64, BIG);
    println!("result done");
}

fn driver(socket: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "workload")
        .env("SHOAL_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("result done"),
        "the driver failed: {stdout}"
    );
}

/// One HTTP exchange: `request` sent as is, the whole answer back (the server closes).
fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The metrics address of `node` (it listens on port 0: status tells which port).
fn metrics_addr(node: &NodeProcess) -> String {
    node.status()["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", node.with_log("no metrics address in the status")))
        .to_string()
}

/// A scrape: the samples by name with labels (`name{a="b"}`), checked for the format's
/// rules on the way.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("a sample: name value");
        assert!(
            name.starts_with("shoal_"),
            "every name has the prefix: {line}"
        );
        samples.insert(name.to_string(), value.parse::<f64>().expect("a number"));
    }
    samples
}

/// The sum of the samples whose name and labels contain every one of `parts`.
fn sum(samples: &BTreeMap<String, f64>, parts: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_of_a_three_node_mesh_match_a_known_workload() {
    let metrics = |o: NodeOptions| o.arg("--metrics").arg("127.0.0.1:0");
    let name = format!("metrics-{}", std::process::id());
    let mut options = vec![metrics(NodeOptions::new().cpus(0.0)).mesh(&name)];
    for r in ["b=1", "c=1"] {
        let o = NodeOptions::new().cpus(1.0).arg("--resource").arg(r);
        options.push(metrics(o).mesh(&name));
    }
    let mesh = Mesh::start_each(options).unwrap();
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    let addrs: Vec<String> = mesh.nodes().iter().map(metrics_addr).collect();
    let before: Vec<_> = addrs.iter().map(|a| scrape(a)).collect();
    for s in &before {
        assert_eq!(sum(s, &["shoal_build_info{"]), 1.0, "{s:?}");
        assert_eq!(sum(s, &["shoal_peers{", "connected"]), 2.0, "{s:?}");
    }

    driver(&mesh.node(0).socket());

    let after: Vec<_> = addrs.iter().map(|a| scrape(a)).collect();
    let (a, b, c) = (&after[0], &after[1], &after[2]);
    let finished = |s: &BTreeMap<String, f64>, f: &str| {
        sum(
            s,
            &[
                "shoal_tasks_finished_total{",
                &format!("{f}\""),
                "outcome=\"ok\"",
            ],
        )
    };
    // Where each task ran.
    assert_eq!(finished(b, "::triple"), SMALL_TASKS as f64, "{b:?}");
    assert_eq!(finished(b, "::make_bytes"), 1.0, "{b:?}");
    assert_eq!(finished(c, "::length"), 1.0, "{c:?}");
    assert_eq!(finished(a, ""), 0.0, "node 0 has no CPU: {a:?}");
    assert_eq!(finished(c, "::triple"), 0.0, "{c:?}");
    // Node 0 submitted every task and sent each to a peer.
    let tasks = SMALL_TASKS as f64 + 2.0;
    assert_eq!(sum(a, &["shoal_tasks_submitted_total"]), tasks, "{a:?}");
    assert!(sum(a, &["shoal_tasks_spilled_total"]) >= tasks, "{a:?}");
    assert_eq!(
        sum(b, &["shoal_tasks_received_total"]) + sum(c, &["shoal_tasks_received_total"]),
        tasks
    );
    // c pulled the object, node 0 pulled it for the driver; b served it at least once.
    let pulled =
        |s: &BTreeMap<String, f64>| sum(s, &["shoal_object_transferred_bytes_total{", "\"in\""]);
    let served =
        |s: &BTreeMap<String, f64>| sum(s, &["shoal_object_transferred_bytes_total{", "\"out\""]);
    assert!(pulled(c) >= BIG as f64, "{c:?}");
    assert!(pulled(a) >= BIG as f64, "{a:?}");
    assert!(served(b) >= BIG as f64, "{b:?}");
    // Every byte pulled was served by some peer.
    assert!(served(a) + served(b) + served(c) >= pulled(a) + pulled(b) + pulled(c));
    // On the sealed lanes (on loopback every lane is reached).
    let lane = |s: &BTreeMap<String, f64>| sum(s, &["shoal_object_lane_sent_bytes_total"]);
    assert!(lane(b) >= BIG as f64, "{b:?}");
    for s in [a, b, c] {
        assert_eq!(sum(s, &["shoal_object_lane_fallbacks_total"]), 0.0, "{s:?}");
    }
    // Each task was handed to a worker: the dispatch histogram counts them.
    let dispatched = |s: &BTreeMap<String, f64>| sum(s, &["shoal_task_dispatch_seconds_count"]);
    assert_eq!(dispatched(b), SMALL_TASKS as f64 + 1.0, "{b:?}");
    assert_eq!(
        sum(b, &["shoal_task_dispatch_seconds_bucket{le=\"+Inf\"}"]),
        dispatched(b)
    );
    // Counters only grow.
    for (s0, s1) in before.iter().zip(&after) {
        for (k, v) in s0.iter().filter(|(k, _)| k.contains("_total")) {
            assert!(
                s1.get(k).is_some_and(|w| w >= v),
                "{k} went from {v} to {:?}",
                s1.get(k)
            );
        }
    }
}

#[test]
fn the_metrics_endpoint_answers_bad_requests_with_errors_and_keeps_serving() {
    let node = NodeProcess::start(
        NodeOptions::new()
            .cpus(1.0)
            .arg("--metrics")
            .arg("127.0.0.1:0"),
    )
    .unwrap();
    let addr = metrics_addr(&node);
    let status = |answer: String| answer.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        status(http(&addr, b"garbage\r\n\r\n")),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status(http(&addr, b"POST /metrics HTTP/1.1\r\n\r\n")),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status(http(&addr, b"GET /other HTTP/1.1\r\n\r\n")),
        "HTTP/1.1 404 Not Found"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 16 * 1024));
    assert_eq!(
        status(http(&addr, &huge)),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A client that connects and says nothing does not hold the endpoint.
    let _silent = TcpStream::connect(&addr).unwrap();
    let s = scrape(&addr);
    assert_eq!(sum(&s, &["shoal_build_info{"]), 1.0);
    // The node itself is unharmed.
    assert_eq!(node.status()["resources"]["total"]["CPU"], 1.0);
}
