//! The web dashboard (`shoal node --dashboard ADDR`) opened in a real headless browser
//! (Debian's chromium) against a live mesh of three node processes: the page shows every
//! peer, a task stream with each task where it ran, the actor, objects and the tasks'
//! output. And its manners: a bad query gets a typed HTTP error, and the node keeps serving.
//!
//! Skipped (with a note) when chromium is not installed, unless `$SHOAL_CHROMIUM_REQUIRED`
//! is set; `.ci/run` installs it and sets that.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal::{ActorOptions, TaskOptions};
use shoal_tests::process::KillOnDrop;
use shoal_tests::{Mesh, NodeOptions};

const ENV_SCENARIO: &str = "SHOAL_TEST_DASHBOARD_SCENARIO";
const TRIPLES: usize = 12;

#[shoal::remote]
fn triple(x: u64) -> u64 {
    println!("tripling {x}");
    3 * x
}

pub struct Keeper {
    n: u64,
}

#[shoal::actor]
impl Keeper {
    pub fn new(n: u64) -> Self {
        Keeper { n }
    }

    pub fn bump(&mut self) -> u64 {
        self.n += 1;
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
    let on_b = TaskOptions::new().num_cpus(1.0).resource("b", 1.0);
    let refs: Vec<_> = (0..TRIPLES as u64)
        .map(|i| triple.options(on_b.clone()).remote(i))
        .collect();
    for (i, r) in refs.into_iter().enumerate() {
        assert_eq!(r.get_blocking().unwrap(), 3 * i as u64);
    }
    let keeper = Keeper::options(
        ActorOptions::new()
            .num_cpus(0.0)
            .resource("c", 1.0)
            .name("keeper")
            .detached(true),
    )
    .remote(0);
    assert_eq!(keeper.bump().get_blocking().unwrap(), 1);
    // An object it holds, in the store of its node, while the page is looked at.
    let kept = shoal::put_bytes(&vec![7u8; 2 << 20]).unwrap();
    println!("result done");
    std::thread::sleep(Duration::from_secs(600));
    drop(kept);
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The page at `url` as the browser has it once its scripts ran.
fn dump_dom(browser: &str, url: &str, profile: &Path) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{browser} failed: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_dashboard_shows_a_live_mesh_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("SHOAL_CHROMIUM_REQUIRED").is_none(),
            "chromium is required here and not installed"
        );
        eprintln!("chromium is not installed: skipping the dashboard test");
        return;
    };
    let name = format!("dash-{}", std::process::id());
    let resourced = |r: &str| NodeOptions::new().cpus(1.0).arg("--resource").arg(r);
    let with_dashboard = NodeOptions::new()
        .cpus(0.0)
        .arg("--dashboard")
        .arg("127.0.0.1:0");
    let mesh = Mesh::start_each(
        [with_dashboard, resourced("b=1"), resourced("c=1")]
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
    let dashboard = mesh.node(0).status()["dashboard"]
        .as_str()
        .expect("the dashboard's address in the status")
        .to_string();

    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "workload")
        .env("SHOAL_SOCKET", mesh.node(0).socket())
        .stdout(Stdio::piped());
    let mut driver = KillOnDrop::spawn("dashboard driver", &mut command).unwrap();
    let stdout = driver.child_mut().stdout.take().unwrap();
    let done = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .any(|l| l.contains("result done"));
    assert!(done, "the driver ended before its work was done");

    let dom = dump_dom(
        browser,
        &format!("http://{dashboard}/"),
        &mesh.node(0).dir().join("browser"),
    );
    assert!(
        dom.contains(r#"<body data-ready="1">"#),
        "the page never loaded its data: {dom}"
    );
    assert!(dom.contains(r#"<div id="error"></div>"#), "{dom}");
    assert!(
        dom.contains(r#"<div id="banner"></div>"#),
        "no peer was missing: {dom}"
    );
    // Every peer.
    for id in &ids {
        assert!(
            dom.contains(&format!(r#"<tr data-peer="{id}">"#)),
            "peer {id}: {dom}"
        );
    }
    // The task stream: each triple once, on b, with its compute bar.
    let triples = dom.matches(r#"data-function="dashboard::triple""#).count();
    assert_eq!(triples, TRIPLES, "{dom}");
    let on_b = format!(
        r#"data-function="dashboard::triple" data-node="{}""#,
        ids[1]
    );
    assert_eq!(dom.matches(&on_b).count(), TRIPLES, "{dom}");
    assert!(dom.contains(r#"class="compute""#), "{dom}");
    // The actor, alive on c; its creation's result among the objects; the output.
    assert!(dom.contains("<td>keeper</td><td>ALIVE</td>"), "{dom}");
    assert!(
        dom.contains("<tr data-object=") && dom.contains("</td><td>memory</td>"),
        "the object the driver holds: {dom}"
    );
    assert!(dom.contains(") tripling 7</div>"), "{dom}");

    // Bad queries: typed errors, and the node goes on.
    let a = http(
        &dashboard,
        "GET /api/state?kind=colours HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        a.starts_with("HTTP/1.1 400 Bad Request") && a.contains("unknown kind"),
        "{a}"
    );
    let a = http(
        &dashboard,
        "GET /api/state?kind=tasks&filter=colour%3Dred HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        a.starts_with("HTTP/1.1 400") && a.contains("no field"),
        "{a}"
    );
    let a = http(&dashboard, "POST /api/state HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 405"), "{a}");
    let a = http(&dashboard, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    let a = http(
        &dashboard,
        "GET /api/state?kind=peers HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        a.starts_with("HTTP/1.1 200 OK") && a.contains("application/json"),
        "{a}"
    );
}
