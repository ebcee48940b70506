//! Admission on real `shoal node` processes over loopback TCP: a node of another authority
//! (even one with the same mesh name) and a plain libp2p client with no credential get no
//! connection at all, either way round, and are logged once; a revoked node leaves every view
//! and cannot come back; an expired credential is dropped while a renewed one keeps its node
//! in; a node cannot start on an expired token.
//!
//! Every mesh here has its own authority, made with `shoal mesh init` ([`TestAuthority`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, identity, noise, ping, tcp, yamux, Multiaddr};
use shoal_tests::{wait_for, NodeOptions, NodeProcess, TestAuthority};

/// Generous: several tests start nodes at once on a small machine.
const CONVERGE: Duration = Duration::from_secs(30);
/// The default failure timeout is 3 s; a revocation or expiry is acted on within a second
/// of being known.
const LEAVE: Duration = Duration::from_secs(10);

/// [`wait_for`] with a plain condition.
fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || Ok(cond().then_some(()))).unwrap_or_else(|e| panic!("{e:#}"));
}

fn mesh_name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

fn sees(node: &NodeProcess, id: &str) -> bool {
    node.view().map(|v| v.contains(id)).unwrap_or(false)
}

fn wait_sees_all(nodes: &[&NodeProcess]) {
    let ids: BTreeSet<String> = nodes.iter().map(|n| n.peer_id().to_owned()).collect();
    wait_until(CONVERGE, "the nodes to see each other", || {
        nodes.iter().all(|n| {
            let v = n.view().unwrap_or_default();
            ids.iter()
                .filter(|id| *id != n.peer_id())
                .all(|id| v.contains(id))
        })
    });
}

/// Lines of `node`'s log that contain every needle.
fn log_lines(node: &NodeProcess, needles: &[&str]) -> usize {
    std::fs::read_to_string(node.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn a_node_of_another_authority_gets_nothing_either_way_and_is_logged_once() {
    let name = mesh_name("closed");
    let members = TestAuthority::new(&name).unwrap();
    let token = members.invite(&[]).unwrap();
    let a = NodeProcess::start(NodeOptions::new().join(&name, &token)).unwrap();
    // Same mesh name, so the same protocol names: only the authority differs.
    let strangers = TestAuthority::new(&name).unwrap();
    let stranger = NodeProcess::start(
        NodeOptions::new()
            .join(&name, strangers.invite(&[]).unwrap())
            .peer(a.listen_addr()),
    )
    .unwrap();
    // A member that dials the stranger (given its address) gets nothing from it either.
    let b = NodeProcess::start(
        NodeOptions::new()
            .join(&name, &token)
            .peer(a.listen_addr())
            .peer(stranger.listen_addr()),
    )
    .unwrap();
    wait_sees_all(&[&a, &b]);
    let sid = stranger.peer_id().to_owned();
    // Refused both ways: a refuses the stranger's dials, the stranger refuses b's.
    wait_until(CONVERGE, "the refusals to be logged", || {
        log_lines(&a, &["not admitted", &sid]) >= 1
            && log_lines(&stranger, &["not admitted", b.peer_id()]) >= 1
    });
    // Through several of the stranger's redials (every 0.5 s, backing off to 10 s) and
    // longer than the failure timeout: nobody sees anybody across the line.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert!(
            !sees(&a, &sid) && !sees(&b, &sid),
            "a member sees the stranger"
        );
        let v = stranger.view().unwrap();
        assert!(v.is_empty(), "the stranger sees {v:?}");
        std::thread::sleep(shoal_tests::POLL);
    }
    let logged = log_lines(&a, &["not admitted", &sid]);
    assert_eq!(logged, 1, "the refusal of one peer is logged once a minute");
    let tried = log_lines(&stranger, &["refused by", a.peer_id()])
        + log_lines(&stranger, &["not admitted", a.peer_id()]);
    assert!(tried >= 1, "the stranger was told it is refused");
}

/// A plain libp2p client (TCP, Noise, Yamux, identify, ping) with no credential.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Plain {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[test]
fn a_libp2p_client_without_a_credential_gets_nothing() {
    let name = mesh_name("plain");
    let node = NodeProcess::start(NodeOptions::new().mesh(&name)).unwrap();
    let addr: Multiaddr = node.listen_addr().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async move {
        let mut swarm =
            libp2p::SwarmBuilder::with_existing_identity(identity::Keypair::generate_ed25519())
                .with_tokio()
                .with_tcp(
                    tcp::Config::default(),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|k| Plain {
                    identify: identify::Behaviour::new(identify::Config::new(
                        format!("/shoal/{name}/1.0.0"),
                        k.public(),
                    )),
                    ping: ping::Behaviour::new(ping::Config::new()),
                })
                .unwrap()
                .build();
        let mut failures = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while failures < 3 {
            swarm.dial(addr.clone()).unwrap();
            loop {
                let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
                    .await
                    .expect("every dial ends within the deadline");
                match ev {
                    // An optimistic (lazy) protocol negotiation may count the connection as
                    // made before the node's refusal arrives: it must close at once, and
                    // nothing may have answered on it.
                    SwarmEvent::Behaviour(PlainEvent::Identify(identify::Event::Received {
                        ..
                    })) => return Err("identify answered".to_string()),
                    SwarmEvent::Behaviour(PlainEvent::Ping(ping::Event {
                        result: Ok(_), ..
                    })) => return Err("ping answered".to_string()),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        failures += 1;
                        eprintln!("dial {failures} failed: {error}");
                        break;
                    }
                    SwarmEvent::ConnectionClosed { cause, .. } => {
                        failures += 1;
                        eprintln!("dial {failures}: closed at once ({cause:?})");
                        break;
                    }
                    _ => {}
                }
            }
        }
        Ok(failures)
    });
    assert_eq!(outcome, Ok(3));
    assert!(node.view().unwrap().is_empty());
}

#[test]
fn a_revoked_node_leaves_every_view_and_cannot_rejoin() {
    let name = mesh_name("revoke");
    let authority = TestAuthority::new(&name).unwrap();
    let token = authority.invite(&[]).unwrap();
    let a = NodeProcess::start(NodeOptions::new().join(&name, &token)).unwrap();
    let opts = NodeOptions::new().join(&name, &token).peer(a.listen_addr());
    let b = NodeProcess::start(opts.clone()).unwrap();
    let mut c = NodeProcess::start(opts).unwrap();
    wait_sees_all(&[&a, &b, &c]);
    let cid = c.peer_id().to_owned();

    // The operator hands the revocation to a's node only; b learns it from the mesh.
    let revocation = authority.revoke_peer(&cid).unwrap();
    let published = Instant::now();
    authority
        .publish(&revocation, &a.dir().join("data"))
        .unwrap();
    wait_until(LEAVE, "the revoked node to leave every view", || {
        !sees(&a, &cid) && !sees(&b, &cid)
    });
    println!(
        "a revoked node left every view {:.2} s after the revocation was published",
        published.elapsed().as_secs_f64()
    );
    b.expect_log(&["revocation received"]);

    // Restarted with the same identity, it is refused by both.
    c.restart().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert!(
            !sees(&a, &cid) && !sees(&b, &cid),
            "the revoked node is back"
        );
        std::thread::sleep(shoal_tests::POLL);
    }
    assert!(c.view().unwrap().is_empty());
    a.expect_log(&["not admitted", &cid, "revoked"]);
}

#[test]
fn an_expired_credential_is_dropped_and_a_renewed_one_is_kept() {
    let name = mesh_name("expiry");
    let authority = TestAuthority::new(&name).unwrap();
    let long = authority.invite(&["--expires", "1d"]).unwrap();
    let a = NodeProcess::start(NodeOptions::new().join(&name, &long)).unwrap();
    let short = authority.invite(&["--expires", "12s"]).unwrap();
    let made = Instant::now();
    let opts = NodeOptions::new().join(&name, &short).peer(a.listen_addr());
    let expiring = NodeProcess::start(opts.clone()).unwrap();
    let renewed = NodeProcess::start(opts).unwrap();
    wait_sees_all(&[&a, &expiring, &renewed]);
    // One of them gets a new token before the old one ends, without a restart.
    let out = renewed
        .run_cli([
            "mesh",
            "renew",
            long.as_str(),
            "--data-dir",
            renewed.dir().join("data").to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    renewed.expect_log(&["credential renewed"]);

    let eid = expiring.peer_id().to_owned();
    wait_until(
        Duration::from_secs(12) + LEAVE,
        "the expired node to leave",
        || !sees(&a, &eid) && !sees(&renewed, &eid),
    );
    assert!(
        made.elapsed() >= Duration::from_secs(11),
        "dropped {:?} after the token was made: before it expired",
        made.elapsed()
    );
    a.expect_log(&["expired; disconnecting"]);
    // Well past the first token's end, the renewed node is still in.
    let rid = renewed.peer_id().to_owned();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert!(sees(&a, &rid), "the renewed node was dropped");
        std::thread::sleep(shoal_tests::POLL);
    }

    // A node cannot start on a token that has expired.
    let dead = authority.invite(&["--expires", "0s"]).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let mut late = NodeProcess::spawn(NodeOptions::new().join(&name, dead)).unwrap();
    let status = late
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("a node with an expired credential exits");
    assert!(!status.success());
    let log = std::fs::read_to_string(late.log_path()).unwrap();
    assert!(log.contains("expired"), "{log}");
}

#[test]
fn a_client_is_a_member_that_is_never_offered_work() {
    let name = mesh_name("client");
    let authority = TestAuthority::new(&name).unwrap();
    let a =
        NodeProcess::start(NodeOptions::new().join(&name, authority.invite(&[]).unwrap())).unwrap();
    let client_token = authority.invite(&["--role", "client"]).unwrap();
    let c = NodeProcess::start(
        NodeOptions::new()
            .join(&name, client_token)
            .cpus(4.0)
            .peer(a.listen_addr()),
    )
    .unwrap();
    wait_sees_all(&[&a, &c]);
    // a sees the client with nothing to offer, though it has 4 CPUs; the client sees a's.
    let offered = |from: &NodeProcess, id: &str| {
        from.status()["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["peer_id"] == id).cloned())
            .map(|p| p["resources"]["total"]["CPU"].as_f64().unwrap_or(0.0))
    };
    wait_until(CONVERGE, "the reports to arrive", || {
        offered(&c, a.peer_id()) == Some(1.0) && offered(&a, c.peer_id()).is_some()
    });
    assert_eq!(offered(&a, c.peer_id()), Some(0.0));
}

#[test]
fn without_a_credential_a_node_serves_its_machine_only() {
    let mut options = NodeOptions::new().without_credential();
    options.listen.clear();
    let node = NodeProcess::spawn(options).unwrap();
    wait_until(CONVERGE, "the node to answer", || node.try_status().is_ok());
    let status = node.try_status().unwrap();
    assert!(
        status["listen_addrs"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "a node with no credential listens: {status}"
    );
    node.expect_log(&["no mesh credential", "shoal mesh init"]);

    // Asked to listen (or given peers) with no credential, it refuses to start.
    let mut listening = NodeProcess::spawn(NodeOptions::new().without_credential()).unwrap();
    let exit = listening
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("it exits");
    assert!(!exit.success());
    let log = std::fs::read_to_string(listening.log_path()).unwrap();
    assert!(log.contains("needs a credential"), "{log}");
}
