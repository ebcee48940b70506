//! Scheduling strategies and label selectors (Ray's): where a task or actor may run.
//!
//! - `Default`: the node it was submitted to while it fits there, else the best peer.
//! - `Spread`: the least loaded node with room, the submitter counted as any other.
//! - `Peer { soft: false }`: only that peer; a task whose peer is not in the view waits for
//!   it during the grace period, then fails as infeasible.
//! - `Peer { soft: true }`: that peer first whenever it is in the view and has room; else as
//!   the default.
//! - A label selector rules out every node whose labels (`--label`) do not meet it, this
//!   one too.
//!
//! The submitter's node applies the strategy. A peer a task was sent to applies only its
//! hard parts (the peer named, the labels): it admits the task only if they allow it, and
//! runs it as the default strategy would, so that a task is not sent on and on.

use shoal_protocol::mesh::PeerKey;
use shoal_protocol::{Strategy, TaskSpec};

use super::sched::placement::Rule;
use super::NodeCore;

/// The hard parts of a task's placement: the one peer it may run on, and its labels.
pub(super) struct Bounds<'a> {
    /// The only peer it may run on (a hard affinity).
    only: Option<PeerKey>,
    spec: &'a TaskSpec,
}

impl Bounds<'_> {
    /// Whether it may run on any node (no hard affinity, no label selector).
    pub(super) fn is_open(&self) -> bool {
        self.only.is_none() && self.spec.label_selector.is_empty()
    }

    /// Whether a node with these labels (and this key) may run it.
    pub(super) fn allows(&self, peer: Option<PeerKey>, labels: &[(String, String)]) -> bool {
        self.only.is_none_or(|p| Some(p) == peer)
            && self.spec.label_selector.iter().all(|m| m.matches(labels))
    }
}

impl NodeCore {
    /// The hard parts of `spec`'s placement.
    pub(super) fn bounds<'a>(&self, spec: &'a TaskSpec) -> Bounds<'a> {
        let only = match &spec.strategy {
            Strategy::Peer { peer, soft: false } => PeerKey::parse(peer),
            _ => None,
        };
        Bounds { only, spec }
    }

    /// Whether this node may run `spec` (its hard affinity and labels allow it).
    pub(super) fn runs_here_allowed(&self, spec: &TaskSpec) -> bool {
        self.bounds(spec).allows(self.me, &self.spill.labels)
    }

    /// The rule the placement of `spec` follows here, `hops` peers after its submitter.
    pub(super) fn rule(&self, spec: &TaskSpec, hops: u32) -> Rule<PeerKey> {
        let at_submitter = hops == 0;
        let preferred = match &spec.strategy {
            Strategy::Peer { peer, soft: true } if at_submitter => {
                PeerKey::parse(peer).filter(|p| Some(*p) != self.me)
            }
            _ => None,
        };
        Rule {
            local_allowed: self.runs_here_allowed(spec),
            spread: at_submitter && spec.strategy == Strategy::Spread,
            preferred,
            local_queued: self.sched.queued() as u64,
        }
    }

    /// Why this node does not take `spec` from a peer, if its strategy or labels rule it
    /// out.
    pub(super) fn ruled_out_here(&self, spec: &TaskSpec) -> Option<String> {
        if self.runs_here_allowed(spec) {
            return None;
        }
        Some(match &spec.strategy {
            Strategy::Peer { peer, soft: false }
                if PeerKey::parse(peer).is_some_and(|p| Some(p) != self.me) =>
            {
                format!("it runs only on peer {peer}")
            }
            _ => "its label selector rules this peer out".into(),
        })
    }
}

/// `spec`'s demand as a sentence part: its resources, and where it may run.
pub(super) fn describe(spec: &TaskSpec) -> String {
    let mut s = spec.resources.to_string();
    match &spec.strategy {
        Strategy::Peer { peer, soft: false } => s.push_str(&format!(" on peer {peer}")),
        Strategy::PlacementGroup { group, bundle } => {
            let bundle = bundle.map_or_else(|| "any bundle".into(), |i| format!("bundle {i}"));
            s.push_str(&format!(" in {bundle} of placement group {group}"));
        }
        _ => {}
    }
    if !spec.label_selector.is_empty() {
        let labels: Vec<String> = spec.label_selector.iter().map(|m| m.to_string()).collect();
        s.push_str(&format!(" with labels {}", labels.join(", ")));
    }
    s
}
