//! `shoal get object ID --out FILE` against a mesh of three real node processes on loopback:
//! node 0 owns two large results made on node 1 and has no copy of them; asked on node 0,
//! the CLI pulls each from node 1 and writes its bytes. Piped, it prints no progress bar; in
//! a real terminal (tmux) it draws one, ending at 100%. `shoal status` then counts the
//! pulled copies. Node 2, never given a ref, finds a large put of the driver's in the mesh's
//! directory and is refused it by its holder.
//!
//! The objects are made by a driver program (this test binary again, attached to node 0),
//! which keeps their refs until the test closes its stdin.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal::{Bytes, TaskOptions};
use shoal_tests::process::KillOnDrop;
use shoal_tests::tmux::Tmux;
use shoal_tests::{status_json, Mesh, NodeOptions, TestDir};

const ENV_SCENARIO: &str = "SHOAL_TEST_GET_OBJECT_SCENARIO";

/// Each result's size.
const SIZE: u64 = 16 << 20;

fn pattern(i: u64, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed)
}

#[shoal::remote]
fn make_bytes(n: u64, seed: u8) -> Bytes {
    Bytes::from((0..n).map(|i| pattern(i, seed)).collect::<Vec<u8>>())
}

#[shoal::remote]
fn length(b: Bytes) -> u64 {
    b.len() as u64
}

/// The driver: two results made on node 1, checked there (so node 0 never pulls them),
/// their ids printed; held until stdin closes.
#[test]
fn driver_entry() {
    let Ok(scenario) = std::env::var(ENV_SCENARIO) else {
        return;
    };
    assert_eq!(scenario, "hold");
    shoal::init().unwrap();
    let on_b = TaskOptions::new().num_cpus(1.0).resource("b", 1.0);
    let made: Vec<_> = (1..=2u8)
        .map(|seed| make_bytes.options(on_b.clone()).remote(SIZE, seed))
        .collect();
    for m in &made {
        let n = length
            .options(on_b.clone())
            .remote(m)
            .get_blocking()
            .unwrap();
        assert_eq!(n, SIZE);
    }
    // A large put: node 0 announces it in the mesh's directory.
    let data: Vec<u8> = (0..SIZE).map(|i| pattern(i, 3)).collect();
    let put = shoal::put_bytes(&data).unwrap();
    let mut ids: Vec<String> = made.iter().map(|m| m.id().to_hex()).collect();
    ids.push(put.id().to_hex());
    println!("ids {}", ids.join(" "));
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    // Until the test closes stdin.
    std::io::stdin().read_line(&mut line).unwrap();
    drop((made, put));
}

/// The object's bytes as the store holds them: the encoded value, whose tail is the data.
fn check_file(path: &std::path::Path, seed: u8) {
    let bytes = std::fs::read(path).unwrap();
    let n = bytes.len() as u64;
    assert!((SIZE..SIZE + 16).contains(&n), "{n} bytes");
    let data = &bytes[(n - SIZE) as usize..];
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i as u64, seed)),
        "the bytes differ from the value's"
    );
}

#[test]
fn get_object_pulls_the_bytes_with_a_bar_only_on_a_terminal() {
    let tmux = Tmux::available("the progress bar part of the `shoal get object` test");
    let name = format!("get-object-{}", std::process::id());
    let mesh = Mesh::start_each(
        [
            NodeOptions::new().cpus(0.0),
            NodeOptions::new().cpus(2.0).arg("--resource").arg("b=1"),
            NodeOptions::new().cpus(0.0),
        ]
        .map(|o| o.mesh(&name))
        .to_vec(),
    )
    .unwrap();
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    let bin = mesh.node(0).bin().to_path_buf();
    let socket = |i: usize| mesh.node(i).socket().display().to_string();

    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "hold")
        .env("SHOAL_SOCKET", mesh.node(0).socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut driver = KillOnDrop::spawn("holding driver", &mut command).unwrap();
    let stdout = driver.child_mut().stdout.take().unwrap();
    // (The test harness writes lines of its own first.)
    let mut lines = BufReader::new(stdout).lines().map(Result::unwrap);
    let line = lines
        .find(|l| l.starts_with("ids "))
        .expect("the driver ended without its ids");
    let ids: Vec<String> = line["ids ".len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 3);
    let dir = TestDir::new("get-object");

    // Piped: the bytes, a JSON summary, no bar. (A unique start of the id is enough.)
    let out1 = dir.path().join("first");
    let got = Command::new(&bin)
        .args(["get", "object", &ids[0][..16], "--json", "--socket"])
        .arg(socket(0))
        .arg("--out")
        .arg(&out1)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(got.status.success(), "{stderr}");
    assert!(stderr.is_empty(), "no bar when piped: {stderr:?}");
    let summary: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(summary["object"], ids[0].as_str());
    let written = summary["bytes"].as_u64().unwrap();
    check_file(&out1, 1);
    assert_eq!(std::fs::metadata(&out1).unwrap().len(), written);
    // Node 0 pulled a copy, held for the driver.
    let status = status_json(&mesh.node(0).socket()).unwrap();
    assert_eq!(status["objects"]["pulled_count"], 1, "{status}");
    assert_eq!(status["objects"]["pulled_bytes"], written, "{status}");

    // Node 2 was never given a ref: it finds node 0 holding the put in the directory, and
    // node 0 refuses it (once the grant it waits for has not come).
    let refused = Command::new(&bin)
        .args(["get", "object", &ids[2], "--socket"])
        .arg(socket(2))
        .arg("--out")
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "node 2 may not read it");
    assert!(
        stderr.contains(&format!("object {} may not be read from here", ids[2])),
        "{stderr}"
    );
    assert!(!dir.path().join("refused").exists());
    // Node 0 counted the refusal.
    let status = status_json(&mesh.node(0).socket()).unwrap();
    assert!(status["refused"]["read"].as_u64() >= Some(1), "{status}");

    if tmux {
        on_a_terminal(&bin, &socket(0), &ids[1], &dir);
        let status = status_json(&mesh.node(0).socket()).unwrap();
        assert_eq!(status["objects"]["pulled_count"], 2, "{status}");
    }

    // The driver lets go, and ends well.
    drop(driver.child_mut().stdin.take());
    lines.for_each(drop);
    driver.finish(Duration::from_secs(30)).unwrap();
}

/// On a terminal: a bar, ending at 100% of the object's size.
fn on_a_terminal(bin: &std::path::Path, socket: &str, id: &str, dir: &TestDir) {
    // On a terminal: a bar, ending at 100% of the object's size.
    let out2 = dir.path().join("second");
    let cmd = format!(
        "{} get object {id} --socket {socket} --out {}; echo exit=$?; read x",
        bin.display(),
        out2.display()
    );
    let term = Tmux::start("get-object", 160, 10, &cmd);
    let screen = term.wait_for(&["exit="]);
    assert!(screen.contains("exit=0"), "{screen}");
    let bar = screen
        .lines()
        .find(|l| l.starts_with(&format!("object {}", &id[..12])))
        .unwrap_or_else(|| panic!("no bar: {screen}"));
    assert!(
        bar.contains(&format!("[{}] 100%", "#".repeat(30))),
        "{screen}"
    );
    assert!(bar.contains("16.0 MiB / 16.0 MiB"), "{screen}");
    check_file(&out2, 2);
}
