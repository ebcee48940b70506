//! Signed code between real `shoal node` processes: a peer runs a driver's shipped binary only
//! with a manifest by a publisher it trusts, and the driver learns why not.
//!
//! Each mesh has two nodes: the driver's (one CPU, no gpu) and a peer with the only gpu, so
//! the driver's gpu task can run only there, from the shipped binary. The driver is this test
//! binary again, attached to its node's socket. The harness's nodes trust the user's default
//! publisher key (which drivers sign with by default); the scenarios here sign otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal::TaskOptions;
use shoal_tests::{shoal_bin, Mesh, NodeOptions, NodeProcess, TestAuthority, TestDir};

const ENV_SCENARIO: &str = "SHOAL_TEST_SIGNED_SCENARIO";

/// Answers `i + 1` and the peer it ran on.
#[shoal::remote]
fn on_gpu(i: u64) -> (u64, String) {
    (i + 1, shoal::peer_id().unwrap_or_default())
}

/// The driver program (a no-op when run as a test of its own): one gpu task; prints
/// `result ran <peer>` or `result rejected <reason>`.
#[test]
fn driver_entry() {
    if std::env::var(ENV_SCENARIO).is_err() {
        return;
    }
    shoal::init().unwrap();
    let gpu = TaskOptions::new().num_cpus(1.0).resource("gpu", 1.0);
    match on_gpu.options(gpu).remote(41).get_blocking() {
        Ok((v, peer)) => {
            assert_eq!(v, 42);
            println!("result ran {peer}");
        }
        Err(shoal::GetError::Task(shoal::TaskError::CodeRejected { reason })) => {
            println!("result rejected {reason}");
        }
        Err(e) => panic!("neither ran nor rejected: {e:?}"),
    }
}

/// Runs `exe` (this test binary or a link to it) as the driver on `socket` with `env`; its
/// one `result` line.
fn driver(exe: &Path, socket: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "driver_entry", "--nocapture", "--quiet"])
        .env(ENV_SCENARIO, "1")
        .env("SHOAL_SOCKET", socket)
        .env_remove("SHOAL_PUBLISHER_KEY")
        .env_remove("SHOAL_JOIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = shoal_tests::run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the driver failed: {stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("result "))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    lines[0].to_string()
}

/// The driver's node and a peer with the gpu that trusts `trusted` too (hex keys).
fn mesh(name: &str, trusted: &[&str]) -> Mesh {
    let token = shoal_tests::authority::token(name).unwrap();
    mesh_of(name, &token, trusted)
}

/// [`mesh`], of the authority whose join token is `token`.
fn mesh_of(name: &str, token: &str, trusted: &[&str]) -> Mesh {
    let first = NodeProcess::start(NodeOptions::new().join(name, token).cpus(1.0)).unwrap();
    let mut gpu = NodeOptions::new()
        .join(name, token)
        .cpus(1.0)
        .arg("--resource")
        .arg("gpu=1")
        .peer(first.listen_addr());
    for k in trusted {
        gpu = gpu.arg("--trust-publisher").arg(*k);
    }
    let gpu = NodeProcess::start(gpu).unwrap();
    let mesh = Mesh::from_nodes(vec![first, gpu]);
    mesh.wait_converged(Duration::from_secs(30)).unwrap();
    mesh
}

/// A fresh publisher key in `dir` (`shoal publisher init --key`): its path and public key.
fn publisher(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new(shoal_bin().unwrap())
        .args(["publisher", "init", "--key"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    (path, key)
}

fn this_exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

#[test]
fn unsigned_code_and_code_of_an_untrusted_publisher_are_rejected_with_the_reason() {
    let dir = TestDir::create_in(&std::env::temp_dir(), "shoal-signed").unwrap();
    let mesh = mesh("signed-rejected", &[]);
    let socket = mesh.node(0).socket();
    // (a) Unsigned: the gpu peer rejects it, and the task fails at once saying why (not as
    // infeasible, nor waiting).
    let line = driver(&this_exe(), &socket, &[("SHOAL_PUBLISHER_KEY", "none")]);
    let gpu = mesh.node(1).peer_id().to_string();
    assert!(
        line.starts_with("rejected ") && line.contains("not signed") && line.contains(&gpu),
        "{line}"
    );
    // (b) Signed by a publisher the gpu peer does not trust: the reason names it.
    let (key, public) = publisher(dir.path(), "stranger.key");
    let key = key.to_str().unwrap();
    let line = driver(&this_exe(), &socket, &[("SHOAL_PUBLISHER_KEY", key)]);
    assert!(
        line.starts_with("rejected ") && line.contains(&public) && line.contains("not trust"),
        "{line}"
    );
    // The gpu peer fetched nothing of it, and logged the rejection.
    let log = std::fs::read_to_string(mesh.node(1).log_path()).unwrap();
    assert!(log.contains("its code is rejected"), "{log}");
    assert!(!log.contains("fetched a binary"), "{log}");
}

#[test]
fn code_signed_by_a_trusted_publisher_runs_on_the_peer() {
    let dir = TestDir::create_in(&std::env::temp_dir(), "shoal-signed").unwrap();
    let (key, public) = publisher(dir.path(), "team.key");
    let mesh = mesh("signed-trusted", &[&public]);
    // (c) Signed at start with the key SHOAL_PUBLISHER_KEY names.
    let line = driver(
        &this_exe(),
        &mesh.node(0).socket(),
        &[("SHOAL_PUBLISHER_KEY", key.to_str().unwrap())],
    );
    assert_eq!(line, format!("ran {}", mesh.node(1).peer_id()));
}

#[test]
fn a_binary_signed_with_shoal_sign_runs_though_its_driver_has_no_key() {
    let dir = TestDir::create_in(&std::env::temp_dir(), "shoal-signed").unwrap();
    let (key, public) = publisher(dir.path(), "release.key");
    // (d) The same bytes elsewhere (so the sidecar is this copy's only), signed there.
    let exe = dir.path().join("driver");
    if std::fs::hard_link(this_exe(), &exe).is_err() {
        std::fs::copy(this_exe(), &exe).unwrap();
    }
    let out = Command::new(shoal_bin().unwrap())
        .arg("sign")
        .arg(&exe)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("driver.shoal-manifest").exists());
    let mesh = mesh("signed-sidecar", &[&public]);
    let line = driver(
        &exe,
        &mesh.node(0).socket(),
        &[("SHOAL_PUBLISHER_KEY", "none")],
    );
    assert_eq!(line, format!("ran {}", mesh.node(1).peer_id()));
}

#[test]
fn a_publisher_the_authority_names_is_trusted_by_every_member() {
    let dir = TestDir::create_in(&std::env::temp_dir(), "shoal-signed").unwrap();
    let (key, public) = publisher(dir.path(), "named.key");
    let key = key.to_str().unwrap();
    let name = format!("signed-named-{}", std::process::id());
    let authority = TestAuthority::new(&name).unwrap();
    let token = authority.invite(&[]).unwrap();
    let mesh = mesh_of(&name, &token, &[]);
    let socket = mesh.node(0).socket();
    // Not trusted yet: rejected, naming the publisher.
    let line = driver(&this_exe(), &socket, &[("SHOAL_PUBLISHER_KEY", key)]);
    assert!(
        line.starts_with("rejected ") && line.contains(&public),
        "{line}"
    );
    // The authority names it; handed to the driver's node, the grant spreads to the gpu peer.
    let grant = authority.trust_publisher(&public).unwrap();
    authority
        .publish(&grant, &mesh.node(0).dir().join("data"))
        .unwrap();
    let gpu_log = mesh.node(1).log_path();
    shoal_tests::wait_for(
        Duration::from_secs(20),
        "the gpu peer to learn the grant",
        || {
            let log = std::fs::read_to_string(&gpu_log)?;
            Ok(log
                .contains("the authority names a publisher")
                .then_some(()))
        },
    )
    .unwrap();
    let line = driver(&this_exe(), &socket, &[("SHOAL_PUBLISHER_KEY", key)]);
    assert_eq!(line, format!("ran {}", mesh.node(1).peer_id()));
    // The peer keeps what it learnt for its next run.
    let kept =
        std::fs::read_to_string(mesh.node(1).dir().join("data").join("revocations")).unwrap();
    assert!(kept.contains(grant.trim()), "{kept}");
}
