//! Several [`NodeProcess`]es of one mesh, and waits on how they see each other.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::node::{DetachedNode, NodeOptions, NodeProcess};
use crate::wait::{log_tail, wait_for};

/// Several nodes of one mesh, each a [`NodeProcess`] guard: dropping the mesh kills them all.
#[derive(Debug)]
pub struct Mesh {
    nodes: Vec<NodeProcess>,
    /// How long the nodes took from the first spawn until all answered and listened.
    startup: Duration,
}

impl Mesh {
    /// Starts `n` nodes of mesh `mesh` with [`NodeOptions::default`] otherwise: see
    /// [`Mesh::start_with`].
    pub fn start(n: usize, mesh: &str) -> Result<Self> {
        Self::start_with(n, &NodeOptions::new().mesh(mesh), None)
    }

    /// Starts `n` nodes with `options` each: node 0 alone, then the others at once, each
    /// given node 0's address as `--peer` (in addition to `options.peers`). Returns when all
    /// answer and listen (not when they have found each other: see
    /// [`Mesh::wait_converged`]). With `parent`, node `i`'s directory is `<parent>/node-<i>`.
    pub fn start_with(n: usize, options: &NodeOptions, parent: Option<&Path>) -> Result<Self> {
        let options_for = |i: usize| {
            let mut o = options.clone();
            if let Some(parent) = parent {
                o.dir = Some(parent.join(format!("node-{i}")));
            }
            o
        };
        Self::start_each((0..n).map(options_for).collect())
    }

    /// Starts one node per entry of `options` (each names its mesh): node 0 alone, then the
    /// others at once, each given node 0's address as `--peer`. Returns when all answer and
    /// listen (see [`Mesh::wait_converged`] for when they have found each other).
    pub fn start_each(options: Vec<NodeOptions>) -> Result<Self> {
        let start = Instant::now();
        let mut options = options.into_iter();
        let mut nodes = Vec::with_capacity(options.len());
        if let Some(first) = options.next() {
            nodes.push(NodeProcess::start(first)?);
        }
        if let Some(bootstrap) = nodes.first().map(|n| n.listen_addr().to_owned()) {
            for o in options {
                nodes.push(NodeProcess::spawn(o.peer(bootstrap.clone()))?);
            }
            for node in &mut nodes[1..] {
                node.wait_ready()?;
            }
        }
        Ok(Self {
            nodes,
            startup: start.elapsed(),
        })
    }

    /// A mesh of nodes started some other way (node 0 is the one [`Mesh::wait_converged`]
    /// takes the mesh name from).
    pub fn from_nodes(nodes: Vec<NodeProcess>) -> Self {
        Self {
            nodes,
            startup: Duration::ZERO,
        }
    }

    /// How long the nodes took to start (to answer and listen).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NodeProcess {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut NodeProcess {
        &mut self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// Adds a node (of any mesh) to this set, so it is stopped with the others. It does not
    /// take part in [`Mesh::wait_converged`] unless its mesh is node 0's.
    pub fn push(&mut self, node: NodeProcess) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Whether node `i` has a process (it may have died without our knowing yet).
    fn has_child(&self, i: usize) -> bool {
        self.nodes[i].has_process()
    }

    /// Each running node's view (peer ids it sees), by index; `None` for nodes not running.
    pub fn views(&self) -> Result<Vec<Option<BTreeSet<String>>>> {
        (0..self.nodes.len())
            .map(|i| {
                if self.has_child(i) {
                    self.nodes[i].view().map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect()
    }

    /// Polls every running node's view until `done(views)` holds (views as in
    /// [`Mesh::views`]), for at most `timeout`; returns how long it took. On timeout the
    /// error shows the last views and the tail of each node's log.
    pub fn wait_views(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Option<BTreeSet<String>>]) -> bool,
    ) -> Result<Duration> {
        let mut last = Vec::new();
        let result = wait_for(timeout, what, || {
            last = self.views()?;
            Ok(done(&last).then_some(()))
        });
        match result {
            Ok(((), took)) => Ok(took),
            Err(e) => Err(anyhow!("{e:#}\n{}", self.describe(&last))),
        }
    }

    /// Each node's id, pid, view and log tail: for error messages.
    pub fn describe(&self, views: &[Option<BTreeSet<String>>]) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let seen = match views.get(i) {
                Some(Some(v)) => format!("sees {v:?}"),
                Some(None) => "not running".to_owned(),
                None => "view unknown".to_owned(),
            };
            out += &format!(
                "node {i} (pid {}, mesh {}, {}): {seen}\n  {}\n",
                node.pid(),
                node.mesh(),
                node.peer_id(),
                log_tail(&node.log_path(), 10).replace('\n', "\n  ")
            );
        }
        out
    }

    /// Waits until every running node of node 0's mesh sees every other running one; returns
    /// how long that took.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Duration> {
        let mesh = self
            .nodes
            .first()
            .map(|n| n.mesh().to_owned())
            .unwrap_or_default();
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.has_child(i) && self.nodes[i].mesh() == mesh)
            .collect();
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.peer_id()).collect();
        self.wait_views(timeout, "the mesh to converge", |views| {
            members.iter().all(|&i| {
                views[i].as_ref().is_some_and(|v| {
                    members
                        .iter()
                        .filter(|&&j| j != i)
                        .all(|&j| v.contains(ids[j]))
                })
            })
        })
    }

    /// Waits until no running node sees `peer_id`; returns how long that took.
    pub fn wait_gone(&self, peer_id: &str, timeout: Duration) -> Result<Duration> {
        self.wait_views(
            timeout,
            &format!("{peer_id} to leave every view"),
            |views| views.iter().flatten().all(|v| !v.contains(peer_id)),
        )
    }

    /// Detaches every node (see [`NodeProcess::detach`]).
    pub fn detach(self) -> Vec<DetachedNode> {
        self.nodes.into_iter().map(NodeProcess::detach).collect()
    }
}
