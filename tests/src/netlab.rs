//! A network lab on one machine: nodes in network namespaces of their own, joined by a
//! bridge, with links that can be cut and healed (issue 12). The tests drive [`Lab`];
//! `scripts/netlab` drives the same [`Network`] and [`NodeProcess`]es from the command line.
//!
//! Layout of a lab whose namespaces are named `<prefix>-…`:
//! - `<prefix>-hub` holds a bridge `br0`; nothing of the lab is in the host's namespace.
//! - Node `i` runs in `<prefix>-n<i>`, whose `eth0` (one end of a veth pair; the other end,
//!   `n<i>`, is on the hub's bridge) has the address `10.77.0.<i+1>/24`, and whose `lo` is up.
//!   The addresses exist only inside the lab, so two labs never collide.
//! - A node listens on `/ip4/10.77.0.<i+1>/tcp/7447`; its API socket and directories are on
//!   the shared file system, so programs (`SHOAL_SOCKET`) and `shoal status` reach it from the
//!   host's namespace.
//! - Cuts are nftables rules in the nodes' namespaces (a table `shoal_lab`, replaced whole on
//!   every change, atomically): packets from `a` to `b` are dropped at `a`'s output; an
//!   isolated node drops everything on its `eth0`. Dropped, not refused: to TCP a cut looks
//!   like a link that went silent.
//!
//! A lab needs root, `ip` (iproute2) with network namespaces, and `nft` (nftables):
//! [`unavailable`] says what is missing. Tests that need a lab call [`skip_unless_available`]
//! and skip with that message, unless `$SHOAL_NETLAB_REQUIRED` is set (CI sets it: there the
//! lab must run).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::mesh::Mesh;
use crate::node::{DetachedNode, NodeOptions, NodeProcess};
use crate::process::{pid_alive, run_with_timeout};

/// The port every lab node listens on (each has an address of its own).
pub const LAB_PORT: u16 = 7447;

/// Set (to anything) to make [`skip_unless_available`] fail rather than skip.
pub const REQUIRED_ENV: &str = "SHOAL_NETLAB_REQUIRED";

/// How long one `ip` or `nft` command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The prefix of the namespaces of labs made by [`Lab::start`] (followed by the pid of the
/// process that made them).
const TEST_PREFIX: &str = "shoal-lab-";

/// Why no lab can be made here, or `None` if one can. Looked at once per process (tests
/// of one binary ask at once, from several threads).
pub fn unavailable() -> Option<String> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WHY.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the network lab needs root (network namespaces, nftables)".into());
    }
    for (tool, args) in [("ip", ["-V"]), ("nft", ["--version"])] {
        let ok = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!(
                "the network lab needs `{tool}` ({}); install it",
                if tool == "ip" { "iproute2" } else { "nftables" }
            ));
        }
    }
    let probe = format!("{TEST_PREFIX}probe-{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot make a network namespace here: {e:#}"));
    }
    if let Err(e) = ip(&["netns", "del", &probe]) {
        return Some(format!("cannot remove network namespace {probe}: {e:#}"));
    }
    None
}

/// `true` if a lab can be made; else prints why the calling test skips and returns `false`,
/// or panics with the reason when `$SHOAL_NETLAB_REQUIRED` is set.
pub fn skip_unless_available(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var_os(REQUIRED_ENV).is_some() {
        panic!("{test}: {why} (and ${REQUIRED_ENV} is set)");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// Runs `ip <args>`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = run_with_timeout(Command::new("ip").args(args), TOOL_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The namespaces of labs whose maker (the pid in their name) has died without removing them,
/// removed. Only names of [`Lab::start`]'s form are touched.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TEST_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            match ip(&["netns", "del", &name]) {
                Ok(()) => eprintln!("removed network namespace {name} of a lab whose maker died"),
                Err(e) => eprintln!("cannot remove stale namespace {name}: {e:#}"),
            }
        }
    }
}

/// Which way [`Network::cut`] cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Both ways: nothing passes between the two.
    Both,
    /// From the first node to the second only (the replies of TCP cannot come back either
    /// way, so connections stall; datagrams the other way pass).
    OneWay,
}

/// The namespaces, links and filter rules of a lab; no processes. Dropping it removes the
/// namespaces (and with them the links and rules) unless it was [`Network::release`]d.
#[derive(Debug, Serialize, Deserialize)]
pub struct Network {
    /// Every namespace's name starts with this.
    prefix: String,
    /// How many node namespaces.
    nodes: usize,
    /// `(a, b)`: packets from node `a` to node `b` are dropped.
    cuts: BTreeSet<(usize, usize)>,
    /// Nodes cut from everyone.
    isolated: BTreeSet<usize>,
    /// Whether dropping this removes the namespaces.
    #[serde(skip)]
    owned: bool,
}

impl Network {
    /// Makes the hub and `nodes` node namespaces, linked and addressed. On an error, what was
    /// made is removed.
    pub fn create(prefix: &str, nodes: usize) -> Result<Self> {
        ensure!(
            (1..=250).contains(&nodes),
            "a lab has 1 to 250 nodes, not {nodes}"
        );
        let mut this = Self {
            prefix: prefix.to_owned(),
            nodes: 0,
            cuts: BTreeSet::new(),
            isolated: BTreeSet::new(),
            owned: true,
        };
        let hub = this.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = this.namespace(i);
            ip(&["netns", "add", &ns])?;
            // Counted as soon as the namespace exists, so that an error removes it.
            this.nodes = i + 1;
            let port = format!("n{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", this.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(this)
    }

    /// The prefix of its namespaces' names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many nodes it links.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Whether it links no node.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Node `i`'s namespace's name.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Node `i`'s namespace, as a file (for [`NodeOptions::netns`]).
    pub fn namespace_path(&self, i: usize) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(self.namespace(i))
    }

    /// Node `i`'s address: `10.77.0.<i+1>`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, u8::try_from(i + 1).expect("at most 250 nodes"))
    }

    /// The address node `i` listens on: `/ip4/10.77.0.<i+1>/tcp/7447`.
    pub fn listen_addr(&self, i: usize) -> String {
        format!("/ip4/{}/tcp/{LAB_PORT}", self.addr(i))
    }

    /// `options` for node `i` of this network: its listen address and namespace, and its
    /// directory `<parent>/n<i>` with `parent` (else a fresh temporary one).
    pub fn node_options(
        &self,
        i: usize,
        options: NodeOptions,
        parent: Option<&Path>,
    ) -> NodeOptions {
        let mut o = options
            .listen_on(self.listen_addr(i))
            .netns(self.namespace_path(i));
        o.dir = parent.map(|p| p.join(format!("n{i}")));
        o
    }

    /// An error unless node `i` exists.
    pub fn check(&self, i: usize) -> Result<()> {
        ensure!(
            i < self.nodes,
            "no node {i}: the lab has {} (0 to {})",
            self.nodes,
            self.nodes.saturating_sub(1)
        );
        Ok(())
    }

    /// Cuts the traffic from `a` to `b`, and from `b` to `a` too with [`Direction::Both`].
    pub fn cut(&mut self, a: usize, b: usize, direction: Direction) -> Result<()> {
        self.check(a)?;
        self.check(b)?;
        ensure!(a != b, "a node is never cut from itself");
        self.cuts.insert((a, b));
        if direction == Direction::Both {
            self.cuts.insert((b, a));
        }
        self.apply(a)?;
        self.apply(b)
    }

    /// Restores the traffic from `a` to `b`, and from `b` to `a` too with
    /// [`Direction::Both`] (an isolated node stays isolated: see [`Network::rejoin`]).
    pub fn heal(&mut self, a: usize, b: usize, direction: Direction) -> Result<()> {
        self.check(a)?;
        self.check(b)?;
        self.cuts.remove(&(a, b));
        if direction == Direction::Both {
            self.cuts.remove(&(b, a));
        }
        self.apply(a)?;
        self.apply(b)
    }

    /// Cuts `a` from every other node (its `eth0` passes nothing).
    pub fn isolate(&mut self, a: usize) -> Result<()> {
        self.check(a)?;
        self.isolated.insert(a);
        self.apply(a)
    }

    /// Ends [`Network::isolate`] of `a` (cuts made with [`Network::cut`] stay).
    pub fn rejoin(&mut self, a: usize) -> Result<()> {
        self.check(a)?;
        self.isolated.remove(&a);
        self.apply(a)
    }

    /// Splits the nodes into `side` and the rest, both ways.
    pub fn partition(&mut self, side: &[usize]) -> Result<()> {
        for &a in side {
            self.check(a)?;
        }
        for &a in side {
            for b in (0..self.nodes).filter(|b| !side.contains(b)) {
                self.cuts.insert((a, b));
                self.cuts.insert((b, a));
            }
        }
        for i in 0..self.nodes {
            self.apply(i)?;
        }
        Ok(())
    }

    /// Ends every cut and isolation.
    pub fn heal_all(&mut self) -> Result<()> {
        self.cuts.clear();
        self.isolated.clear();
        for i in 0..self.nodes {
            self.apply(i)?;
        }
        Ok(())
    }

    /// The cuts in force, `(from, to)`.
    pub fn cuts(&self) -> &BTreeSet<(usize, usize)> {
        &self.cuts
    }

    /// The isolated nodes.
    pub fn isolated(&self) -> &BTreeSet<usize> {
        &self.isolated
    }

    /// The nftables ruleset of node `i`'s namespace, replacing the lab's table whole (the
    /// `table` line first makes sure there is one to delete).
    fn ruleset(&self, i: usize) -> String {
        let mut input = String::new();
        let mut output = String::new();
        if self.isolated.contains(&i) {
            input += "    iifname \"eth0\" drop\n";
            output += "    oifname \"eth0\" drop\n";
        }
        for &(a, b) in &self.cuts {
            if a == i {
                output += &format!("    ip daddr {} drop\n", self.addr(b));
            }
        }
        format!(
            "table inet shoal_lab\ndelete table inet shoal_lab\n\
             table inet shoal_lab {{\n\
             \x20 chain input {{\n    type filter hook input priority 0; policy accept;\n{input}  }}\n\
             \x20 chain output {{\n    type filter hook output priority 0; policy accept;\n{output}  }}\n\
             }}\n"
        )
    }

    /// Loads node `i`'s rules into its namespace.
    fn apply(&self, i: usize) -> Result<()> {
        let ruleset = self.ruleset(i);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(i), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        let mut stdin = child.stdin.take().context("nft's stdin")?;
        stdin.write_all(ruleset.as_bytes())?;
        drop(stdin);
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft in {} failed: {}\n{ruleset}",
            self.namespace(i),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Sets `command` to run in node `i`'s namespace (for a program that needs the lab's
    /// network; programs that only talk to a node need nothing but its socket). Keep the
    /// returned file open until the command is spawned (or exec'd).
    pub fn exec_in(&self, i: usize, command: &mut Command) -> Result<std::fs::File> {
        self.check(i)?;
        enter_netns(command, &self.namespace_path(i))
    }

    /// Leaves the namespaces in place when this value is dropped (for `scripts/netlab up`,
    /// whose state file records them).
    pub fn release(mut self) -> Self {
        self.owned = false;
        self
    }

    /// Marks a network read back from a state file as this process's to remove.
    pub fn adopt(mut self) -> Self {
        self.owned = true;
        self
    }

    /// Removes every namespace of the lab (their links and rules go with them). Namespaces
    /// already gone are no error.
    pub fn remove(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        let names: Vec<String> = (0..self.nodes)
            .map(|i| self.namespace(i))
            .chain([self.hub()])
            .collect();
        for name in names {
            if PathBuf::from(NETNS_DIR).join(&name).exists() {
                if let Err(e) = ip(&["netns", "del", &name]) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        self.owned = false;
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = self.remove() {
                eprintln!("removing the lab's network: {e:#}");
            }
        }
    }
}

/// A lab: N `shoal node`s, node `i` in namespace `i` of a [`Network`], node 0 started first
/// and the others bootstrapped from it. Dropping it kills the nodes (their guards), then
/// removes the namespaces.
#[derive(Debug)]
pub struct Lab {
    // Declared first, so dropped first: the nodes die before their namespaces go.
    mesh: Mesh,
    network: Network,
    frozen: BTreeSet<usize>,
}

impl Lab {
    /// Starts `n` nodes with `options` (its `listen`, `netns` and `dir` are the lab's; node 0
    /// is every other node's `--peer`) and waits until each answers and listens, not until
    /// they see each other (see [`Mesh::wait_converged`]).
    pub fn start(n: usize, options: &NodeOptions) -> Result<Self> {
        Self::start_with(n, |_| options.clone())
    }

    /// [`Lab::start`] with namespaces named `<prefix>-…` and, with `parent`, node `i`'s
    /// directory `<parent>/n<i>` (else a fresh temporary one): for `scripts/netlab`.
    pub fn start_named(
        prefix: &str,
        n: usize,
        options: &NodeOptions,
        parent: Option<&Path>,
    ) -> Result<Self> {
        Self::start_each(prefix, n, |_| options.clone(), parent)
    }

    /// [`Lab::start`] with node `i` started with `options(i)` (say, node 0 with no CPU).
    pub fn start_with(n: usize, options: impl Fn(usize) -> NodeOptions) -> Result<Self> {
        static LABS: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let prefix = format!(
            "{TEST_PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        Self::start_each(&prefix, n, options, None)
    }

    fn start_each(
        prefix: &str,
        n: usize,
        options: impl Fn(usize) -> NodeOptions,
        parent: Option<&Path>,
    ) -> Result<Self> {
        let network = Network::create(prefix, n)?;
        let mut nodes = Vec::with_capacity(n);
        nodes.push(NodeProcess::start(network.node_options(
            0,
            options(0),
            parent,
        ))?);
        let bootstrap = nodes[0].listen_addr().to_owned();
        ensure!(
            bootstrap.starts_with(&network.listen_addr(0)),
            "node 0 listens on {bootstrap}, not on its lab address {}",
            network.listen_addr(0)
        );
        for i in 1..n {
            let o = network.node_options(i, options(i), parent);
            nodes.push(NodeProcess::spawn(o.peer(bootstrap.clone()))?);
        }
        for node in &mut nodes[1..] {
            node.wait_ready()?;
        }
        Ok(Self {
            mesh: Mesh::from_nodes(nodes),
            network,
            frozen: BTreeSet::new(),
        })
    }

    /// Lets the nodes and the network outlive this value (and this process): for
    /// `scripts/netlab up`, which records them.
    pub fn detach(self) -> (Network, Vec<DetachedNode>) {
        let Self { mesh, network, .. } = self;
        (network.release(), mesh.detach())
    }

    /// The nodes, with the mesh's waits ([`Mesh::wait_converged`], [`Mesh::wait_gone`], …).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NodeProcess {
        self.mesh.node(i)
    }

    /// Node `i`, to act on it directly (say, stop it with SIGTERM and wait for its exit).
    pub fn node_mut(&mut self, i: usize) -> &mut NodeProcess {
        self.mesh.node_mut(i)
    }

    /// The lab's network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// See [`Network::cut`].
    pub fn cut(&mut self, a: usize, b: usize, direction: Direction) -> Result<()> {
        self.network.cut(a, b, direction)
    }

    /// See [`Network::heal`].
    pub fn heal(&mut self, a: usize, b: usize, direction: Direction) -> Result<()> {
        self.network.heal(a, b, direction)
    }

    /// See [`Network::isolate`].
    pub fn isolate(&mut self, a: usize) -> Result<()> {
        self.network.isolate(a)
    }

    /// See [`Network::rejoin`].
    pub fn rejoin(&mut self, a: usize) -> Result<()> {
        self.network.rejoin(a)
    }

    /// See [`Network::partition`].
    pub fn partition(&mut self, side: &[usize]) -> Result<()> {
        self.network.partition(side)
    }

    /// See [`Network::heal_all`].
    pub fn heal_all(&mut self) -> Result<()> {
        self.network.heal_all()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.frozen.remove(&i);
        self.mesh.node_mut(i).kill_9()
    }

    /// Starts node `i` again (same directory, so the same identity; same address), killing it
    /// first if it runs; waits until it is ready.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.frozen.remove(&i);
        self.mesh.node_mut(i).restart()
    }

    /// Stops node `i` with SIGSTOP: alive, holding its connections, answering nothing.
    pub fn freeze(&mut self, i: usize) -> Result<()> {
        self.mesh.node_mut(i).signal(libc::SIGSTOP)?;
        self.frozen.insert(i);
        Ok(())
    }

    /// Lets a frozen node `i` run on (SIGCONT).
    pub fn thaw(&mut self, i: usize) -> Result<()> {
        if !self.frozen.remove(&i) {
            return Err(anyhow!("node {i} is not frozen"));
        }
        self.mesh.node_mut(i).signal(libc::SIGCONT)
    }
}

/// Sets `command` to enter the network namespace at `path` (`setns` in the child, before its
/// exec). The returned file must stay open until the command is spawned: the child uses its
/// descriptor (opened close-on-exec, so the exec closes it in the child).
pub(crate) fn enter_netns(command: &mut Command, path: &Path) -> Result<std::fs::File> {
    use std::os::unix::process::CommandExt as _;
    let ns = std::fs::File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
    // SAFETY: setns is a plain system call, async-signal-safe; the descriptor is open in the
    // child until its exec, since the caller keeps `ns` open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(ns)
}
