//! The workspace's one test-support library: real `shoal node` processes, child-process
//! guards, waits with deadlines and a raw protocol client, for every test (the node's own
//! included, as a dev-dependency), the benchmarks and `scripts/mesh`.
//!
//! The cross-crate tests live in `tests/tests/`, the node's process-level tests in
//! `node/tests/`; both, the `shoal-bench` mesh rows and the `shoal-mesh` tool behind
//! `scripts/mesh` start and watch their processes with this crate. It depends on
//! `shoal-protocol` only (never on `shoal-node`: the node has it as a dev-dependency), and
//! talks to nodes through their binary and their socket, as a user would.
//!
//! - [`process`]: [`KillOnDrop`], the one guard of a child process (dropping it kills *its
//!   own* child with SIGKILL and reaps it; never a process found by name); [`TestDir`], a
//!   directory removed on drop; [`pid_alive`], [`parent_of`] and [`cmdline`] from `/proc`;
//!   [`run_with_timeout`].
//! - [`node`]: [`NodeProcess`] starts one `shoal node` in a directory of its own (socket,
//!   store, spill directory, data directory with the identity key, and `node.log` with its
//!   stdout and stderr) and waits until it answers `shoal status --json` and listens. It keeps
//!   its process in a [`KillOnDrop`]: dropping it kills the node and removes the directory. It
//!   can be killed ([`NodeProcess::kill_9`]), signalled ([`NodeProcess::signal`]), restarted
//!   with the same directory, so the same identity ([`NodeProcess::restart`]), watched for a
//!   log line ([`NodeProcess::expect_log`]), or handed over as a [`DetachedNode`] that
//!   outlives this process ([`NodeProcess::detach`]). [`status_json`], [`peers_json`] and
//!   [`view`] ask a node how it sees the mesh; [`stop_node`] and friends stop a node that is
//!   not our child (the script's `down`), by pid, and only after `/proc/<pid>/cmdline` shows
//!   it is still the `shoal node` on the recorded socket, so a recycled pid is never
//!   signalled.
//! - [`mesh`]: [`Mesh`] starts N nodes, the first one alone and the others bootstrapped from
//!   it (`--peer <node 0's address>`), and waits on the peers' views: converged
//!   ([`Mesh::wait_converged`]), a peer gone from every view ([`Mesh::wait_gone`]), or any
//!   condition ([`Mesh::wait_views`]).
//! - [`wait`]: everything that waits polls with a deadline ([`wait_for`], [`wait_for_line`]):
//!   nothing here sleeps in place of a check, and nothing waits forever (even the
//!   `shoal status` client is killed if it hangs).
//! - [`netlab`]: [`Lab`], nodes in network namespaces of their own on one bridge, with links
//!   cut and healed by nftables ([`Network`]); behind `scripts/netlab` too. Needs root.
//! - [`tmux`]: [`tmux::Tmux`], a real terminal (a tmux server of the test's own) for tests
//!   of what a command draws on a terminal.
//! - [`statefile`]: [`StateFile`], where `scripts/mesh` and `scripts/netlab` record what they
//!   started, for their `status` and `down`.
//! - [`chaos`]: the chaos soak of `scripts/chaos` ([`chaos::run`]): a lab, three workload
//!   drivers, faults at random from a seed, then the invariants checked (no wrong result, no
//!   hang, no leak, only allowed errors).
//! - [`raw`]: [`RawClient`], a client of a node's Unix socket that speaks the protocol's frames
//!   byte by byte, for tests of broken and hostile clients.
//!
//! [`shoal_bin`] finds the binary: `$SHOAL_BIN`, else the `shoal` beside the running
//! executable. `cargo test --workspace` builds it; with `cargo test -p shoal-tests`, run
//! `cargo build -p shoal-node --bin shoal` first. (The node's tests name theirs with
//! [`NodeOptions::bin`].)
//!
//! Errors carry the tail of the node's log, which is usually what explains a failure.
//!
//! Every node is started with `--no-mdns` (a test mesh must not pick up peers of the LAN or of
//! other tests) and, unless told otherwise ([`NodeOptions`]), listens on
//! `/ip4/127.0.0.1/tcp/0`, has 1 CPU and a 64 MiB store inside its own directory, and logs
//! without colour codes (`NO_COLOR=1`; `RUST_LOG` is passed on).
//!
//! Everything is re-exported at the crate root.
//!
//! ```no_run
//! use std::time::Duration;
//! use shoal_tests::Mesh;
//!
//! let mesh = Mesh::start(3, "example")?;
//! let took = mesh.wait_converged(Duration::from_secs(20))?;
//! println!("3 nodes converged in {took:?}; node 0 is {}", mesh.node(0).peer_id());
//! # anyhow::Ok(())
//! ```

#![deny(missing_docs, unreachable_pub)]

pub mod authority;
pub mod chaos;
pub mod mesh;
pub mod netlab;
pub mod node;
pub mod process;
pub mod raw;
pub mod statefile;
pub mod tmux;
pub mod wait;

pub use authority::TestAuthority;
pub use mesh::Mesh;
pub use netlab::{Direction, Lab, Network};
pub use node::{
    example_bin, free_tcp_port, is_shoal_node, peers_json, run_cli, shoal_bin, signal_node,
    status_json, stop_node, stop_nodes, view, DetachedNode, NodeOptions, NodeProcess, Stopped,
    CLI_TIMEOUT, DEFAULT_STARTUP_TIMEOUT, LOG_FILE,
};
pub use process::{cmdline, parent_of, pid_alive, run_with_timeout, KillOnDrop, TestDir, KEEP_ENV};
pub use raw::{cli_hello, expect_rejected_and_closed, frame_of, Closed, RawClient};
pub use statefile::StateFile;
pub use wait::{log_tail, wait_for, wait_for_line, DEADLINE, POLL};
