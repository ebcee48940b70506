//! Placement groups (Ray's): bundles of resources reserved together, with no head.
//!
//! The node a group is created at places it (its *placer*). It chooses a node for each
//! bundle from what it knows of the mesh's free resources ([`plan`]), then reserves them
//! in two phases among the nodes chosen:
//!
//! 1. **Prepare.** Each node chosen sets the bundles aside (all of them or none): they are
//!    no longer free for anything else, and not yet offered to anyone.
//!    [`PeerMsg::GroupPrepare`], answered by [`PeerMsg::GroupPrepared`].
//! 2. **Commit.** Once every node said yes, each offers its bundles under their own names
//!    ([`shoal_protocol::groups`]) to the group's tasks and actors. If one said no (it had
//!    no room by then) or was lost, the others free what they set aside, and the group
//!    waits for room, then tries again.
//!
//! The group's ready object ([`ObjectId::for_group`]) becomes `()` when every bundle is
//! committed. A task scheduled into the group asks the renamed resources, so the ordinary
//! placement sends it where its bundle is; at the placer it waits while the group is not
//! placed. Removing the group (or the end of the process that created it, unless it is
//! detached) frees the bundles everywhere, and what ran on them ends with
//! [`TaskError::GroupRemoved`]. A group that no node of the mesh could ever hold fails with
//! [`TaskError::Infeasible`] after [`INFEASIBLE_GRACE`] (peers may still be joining).
//!
//! Failures: a node holding bundles that loses the placer frees them (its tasks end); a
//! placer that loses a node holding bundles places those bundles again elsewhere, under the
//! same rules (the ones on other nodes are kept).

use std::collections::HashMap;
use std::time::Instant;

use shoal_protocol::groups::{bundle_resources, group_resources};
use shoal_protocol::mesh::{PeerKey, PeerMsg};
use shoal_protocol::{
    GroupId, GroupStrategy, IdMap, ObjectId, ObjectValue, ResourceSet, Strategy, TaskError, TaskId,
    MAX_BUNDLES,
};

use super::rights::Refused;
use super::spill::{INFEASIBLE_GRACE, SPILL_INTERVAL};
use super::{NodeCore, Party};

/// A group as `ToNode::CreateGroup` asks for it.
pub(super) struct NewGroup {
    pub(super) group: GroupId,
    pub(super) bundles: Vec<ResourceSet>,
    pub(super) strategy: GroupStrategy,
    pub(super) detached: bool,
    pub(super) token: [u8; 16],
}

/// A node a bundle goes to: this one (`None`) or a peer.
pub(crate) type Site = Option<PeerKey>;

/// A placement group this node placed.
#[derive(Debug)]
pub(crate) struct Placed {
    creator: Party,
    /// The secret of its handles, which a removal carries.
    token: [u8; 16],
    detached: bool,
    bundles: Vec<ResourceSet>,
    strategy: GroupStrategy,
    /// Where each bundle is committed (`None`: not placed).
    sites: Vec<Option<Site>>,
    /// A placement in its first phase.
    round: Option<Round>,
    /// Its ready object has its value.
    told: bool,
    /// Since when it has waited for room (for the infeasible grace).
    since: Instant,
    /// When it was asked for.
    created: Instant,
    /// Tasks submitted into it while it is not placed.
    parked: Vec<TaskId>,
}

#[derive(Debug)]
struct Round {
    /// The bundles it places, and where.
    sites: Vec<(u32, Site)>,
    /// The peers that have not answered yet.
    waiting: Vec<PeerKey>,
}

/// How long bundles set aside for a peer's group wait for its commit before they are
/// freed (a placer that prepares and never commits holds nothing for long).
pub(crate) const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bundles this node holds for a group.
#[derive(Debug)]
pub(crate) struct Held {
    /// The node that placed the group (`None`: this one).
    placer: Site,
    bundles: Vec<(u32, ResourceSet)>,
    /// The first this many of `bundles` are committed (offered); the rest are set aside.
    committed: usize,
    /// When the bundles not committed were set aside.
    prepared: Instant,
}

impl Held {
    fn sum(&self) -> ResourceSet {
        let mut s = ResourceSet::new();
        for (_, b) in &self.bundles {
            s.add(b);
        }
        s
    }
}

/// The placement groups this node placed, and the bundles it holds.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    placed: IdMap<GroupId, Placed>,
    held: HashMap<GroupId, Held>,
    /// When groups waiting for room are looked at again.
    pub(crate) next_pass: Option<Instant>,
}

impl Groups {
    /// A row for each group this node placed (`node`: this node's name, where a bundle is
    /// here), for `shoal list placement-groups`.
    pub(crate) fn rows(&self, now: Instant, node: &str) -> Vec<shoal_protocol::state::GroupRow> {
        self.placed
            .iter()
            .map(|(id, g)| {
                let sites: Vec<String> = g
                    .sites
                    .iter()
                    .map(|s| match s {
                        None => "-".to_string(),
                        Some(None) => node.to_string(),
                        Some(Some(peer)) => peer.to_string(),
                    })
                    .collect();
                let placed = g.sites.iter().all(Option::is_some);
                let state = match (placed, g.told) {
                    (true, _) => "CREATED",
                    // Placed once; a bundle's peer was lost and it is being placed again.
                    (false, true) => "RESCHEDULING",
                    (false, false) => "PENDING",
                };
                shoal_protocol::state::GroupRow {
                    group_id: *id,
                    node: node.to_string(),
                    state: state.to_string(),
                    strategy: g.strategy.to_string(),
                    bundles: g.bundles.clone(),
                    sites,
                    detached: g.detached,
                    created_ago_us: now.saturating_duration_since(g.created).as_micros() as u64,
                }
            })
            .collect()
    }
}

/// Where each bundle not yet placed goes, given where the others are (`placed`) and what
/// each node has free (`rooms`, in order of preference): `None` if `strategy` cannot be met.
pub(crate) fn plan(
    bundles: &[ResourceSet],
    placed: &[Option<Site>],
    strategy: GroupStrategy,
    rooms: &[(Site, ResourceSet)],
) -> Option<Vec<(u32, Site)>> {
    let todo: Vec<usize> = (0..bundles.len())
        .filter(|i| placed[*i].is_none())
        .collect();
    let mut free: Vec<ResourceSet> = rooms.iter().map(|(_, f)| f.clone()).collect();
    let mut used: Vec<usize> = rooms
        .iter()
        .map(|(s, _)| placed.iter().filter(|p| **p == Some(*s)).count())
        .collect();
    let mut sum = ResourceSet::new();
    for i in &todo {
        sum.add(&bundles[*i]);
    }
    let all_at = |r: usize| todo.iter().map(|i| (*i as u32, rooms[r].0)).collect();
    match strategy {
        GroupStrategy::StrictPack => {
            let fixed = placed.iter().flatten().next().copied();
            let r = (0..rooms.len())
                .find(|r| fixed.is_none_or(|s| s == rooms[*r].0) && free[*r].contains(&sum))?;
            Some(all_at(r))
        }
        GroupStrategy::Pack => {
            // One node if one has room for all (one already used first), else the fewest.
            let mut order: Vec<usize> = (0..rooms.len()).collect();
            order.sort_by_key(|r| std::cmp::Reverse(used[*r]));
            if let Some(r) = order.iter().copied().find(|r| free[*r].contains(&sum)) {
                return Some(all_at(r));
            }
            let mut out = Vec::new();
            for i in todo {
                let r = (0..rooms.len())
                    .filter(|r| free[*r].contains(&bundles[i]))
                    .max_by_key(|r| (used[*r], std::cmp::Reverse(*r)))?;
                free[r].subtract(&bundles[i]);
                used[r] += 1;
                out.push((i as u32, rooms[r].0));
            }
            Some(out)
        }
        GroupStrategy::Spread | GroupStrategy::StrictSpread => {
            let strict = strategy == GroupStrategy::StrictSpread;
            let mut out = Vec::new();
            for i in todo {
                let fits = |r: &usize| free[*r].contains(&bundles[i]);
                let r = (0..rooms.len())
                    .filter(|r| used[*r] == 0)
                    .find(fits)
                    .or_else(|| {
                        if strict {
                            None
                        } else {
                            (0..rooms.len()).filter(fits).min_by_key(|r| (used[*r], *r))
                        }
                    })?;
                free[r].subtract(&bundles[i]);
                used[r] += 1;
                out.push((i as u32, rooms[r].0));
            }
            Some(out)
        }
    }
}

/// Why a group's options are refused, if they are.
fn invalid(bundles: &[ResourceSet]) -> Option<String> {
    if bundles.is_empty() || bundles.len() > MAX_BUNDLES {
        return Some(format!(
            "a placement group has 1 to {MAX_BUNDLES} bundles, not {}",
            bundles.len()
        ));
    }
    for (i, b) in bundles.iter().enumerate() {
        if b.0.values().all(|v| *v == 0) {
            return Some(format!("bundle {i} reserves nothing"));
        }
        if b.0.keys().any(|k| k.contains("_group_")) {
            return Some(format!("bundle {i} asks a placement group's resource"));
        }
        if let Err(reason) = b.check_demand() {
            return Some(format!("bundle {i}: {reason}"));
        }
    }
    None
}

fn describe(bundles: &[ResourceSet], strategy: GroupStrategy) -> String {
    let b: Vec<String> = bundles.iter().map(|b| format!("{{{b}}}")).collect();
    format!("placement group [{}] ({strategy})", b.join(", "))
}

impl Groups {
    /// How many groups this node placed, and how many it holds bundles of.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.placed.len(), self.held.len())
    }
}

impl NodeCore {
    /// `ToNode::CreateGroup` from `party`, which holds the group's ready object from now on.
    pub(super) fn create_group(&mut self, now: Instant, party: Party, new: NewGroup) {
        let NewGroup {
            group,
            bundles,
            strategy,
            detached,
            token,
        } = new;
        let ready = ObjectId::for_group(group);
        let client = match party {
            Party::Proc(conn) => self.procs.get(&conn).map(|c| c.client),
            Party::Peer(_) => None,
        };
        if self.groups.placed.contains_key(&group) || self.objects.contains(&ready) {
            tracing::warn!(%party, %group, "a placement group made twice; ignored");
            return;
        }
        {
            let e = self.objects.entry(ready);
            e.holders.push(party);
            e.push_to = Some(party);
            e.owner = client;
        }
        if let Some(reason) = invalid(&bundles) {
            tracing::debug!(%group, %reason, "a placement group with invalid options; failed");
            let err = TaskError::InvalidOptions { reason };
            self.object_ready(now, ready, ObjectValue::Error(err));
            return;
        }
        tracing::debug!(%group, bundles = bundles.len(), %strategy, "placement group created");
        let n = bundles.len();
        self.groups.placed.insert(
            group,
            Placed {
                creator: party,
                token,
                detached,
                bundles,
                strategy,
                sites: vec![None; n],
                round: None,
                told: false,
                since: now,
                created: now,
                parked: Vec::new(),
            },
        );
        self.place_group(now, group);
    }

    /// Whether `task` (scheduled into a group this node placed) must wait for the group to
    /// be placed; if so it is parked with it, or failed if its bundle does not exist.
    pub(super) fn park_in_group(&mut self, now: Instant, task: TaskId) -> bool {
        if self.groups.placed.is_empty() {
            return false;
        }
        let Some(&Strategy::PlacementGroup { group, bundle }) =
            self.tasks.get(&task).map(|e| &e.spec.strategy)
        else {
            return false;
        };
        let Some(g) = self.groups.placed.get_mut(&group) else {
            return false;
        };
        if let Some(i) = bundle.filter(|i| *i as usize >= g.bundles.len()) {
            let reason = format!(
                "group {group} has no bundle {i} ({} in all)",
                g.bundles.len()
            );
            self.fail_task(now, task, TaskError::InvalidOptions { reason });
            return true;
        }
        if g.sites.iter().all(Option::is_some) {
            return false;
        }
        g.parked.push(task);
        true
    }

    /// `ToNode::RemoveGroup` from `party`, with the secret of the group's handles: removes
    /// the group if this node placed it, or asks its placer to.
    pub(super) fn remove_group_for(
        &mut self,
        now: Instant,
        party: Party,
        group: GroupId,
        token: [u8; 16],
        placer: Option<String>,
    ) {
        if let Some(g) = self.groups.placed.get(&group) {
            if g.token == token {
                self.remove_group(now, group, "");
            } else {
                // (From a peer, a process there asked: the peer only passed it on.)
                tracing::warn!(%party, %group, "a placement group's removal without its handle's secret; refused");
            }
            return;
        }
        let placer = placer.as_deref().and_then(PeerKey::parse);
        match (party, placer) {
            (Party::Proc(_), Some(p)) if Some(p) != self.me => {
                tracing::debug!(%group, placer = %p, "placement group removal sent on to its placer");
                self.tell_peer(p, PeerMsg::GroupRemove { group, token });
            }
            _ => tracing::debug!(%group, "removal of a placement group not placed here; ignored"),
        }
    }

    /// Frees the group everywhere; what runs in it ends.
    pub(super) fn remove_group(&mut self, now: Instant, group: GroupId, reason: &str) {
        let Some(g) = self.groups.placed.remove(&group) else {
            tracing::debug!(%group, "removal of a placement group not placed here; ignored");
            return;
        };
        tracing::debug!(%group, reason, "placement group removed");
        let mut sites: Vec<Site> = g.sites.iter().flatten().copied().collect();
        if let Some(r) = &g.round {
            sites.extend(r.sites.iter().map(|(_, s)| *s));
        }
        sites.sort();
        sites.dedup();
        for site in sites {
            self.release_at(now, group, site, reason, false);
        }
        let error = TaskError::GroupRemoved {
            group,
            reason: reason.to_string(),
        };
        if !g.told {
            self.object_ready(
                now,
                ObjectId::for_group(group),
                ObjectValue::Error(error.clone()),
            );
        }
        let mut failed = g.parked;
        // Tasks waiting for a peer with the group's resources.
        failed.extend(self.spill.remote_wait.iter().copied().filter(|t| {
            self.tasks.get(t).is_some_and(
                |e| matches!(e.spec.strategy, Strategy::PlacementGroup { group: x, .. } if x == group),
            )
        }));
        self.spill.remote_wait.retain(|t| !failed.contains(t));
        for t in failed {
            self.fail_task(now, t, error.clone());
        }
    }

    /// Frees what `site` holds for `group` (with `aborted`, only what it set aside and did
    /// not commit).
    fn release_at(
        &mut self,
        now: Instant,
        group: GroupId,
        site: Site,
        reason: &str,
        aborted: bool,
    ) {
        match site {
            None if aborted => self.drop_uncommitted(now, group),
            None => self.release_held(now, group, reason),
            Some(peer) => {
                let msg = PeerMsg::GroupRelease {
                    group,
                    reason: reason.to_string(),
                    aborted,
                };
                self.tell_peer(peer, msg);
                if aborted {
                    return;
                }
                if let Some(l) = self.spill.peers.get_mut(&peer) {
                    let of_group = group_resources(group);
                    l.report.total.remove_where(&of_group);
                    l.report.free.remove_where(of_group);
                }
            }
        }
    }

    /// Frees the bundles this node holds for `group`: what used them ends.
    fn release_held(&mut self, now: Instant, group: GroupId, reason: &str) {
        let Some(held) = self.groups.held.remove(&group) else {
            return;
        };
        let error = TaskError::GroupRemoved {
            group,
            reason: reason.to_string(),
        };
        if held.committed > 0 {
            let ended = self.sched.withdraw(now, group_resources(group));
            for t in ended.tasks {
                self.fail_task(now, t, error.clone());
            }
            for t in ended.actors {
                match self.actors.by_task(&t) {
                    Some(actor) => {
                        let reason = format!("its {error}");
                        self.kill_actor(now, actor, TaskError::ActorKilled { actor, reason });
                    }
                    None => self.fail_task(now, t, error.clone()),
                }
            }
        }
        self.sched.unreserve(now, &held.sum());
    }

    /// Tries to place what is not placed of `group`.
    fn place_group(&mut self, now: Instant, group: GroupId) {
        let Some(g) = self.groups.placed.get(&group) else {
            return;
        };
        if g.round.is_some() || g.sites.iter().all(Option::is_some) {
            return;
        }
        let mut rooms: Vec<(Site, ResourceSet)> = vec![(None, self.sched.free().clone())];
        let mut peers: Vec<(&PeerKey, &super::spill::PeerLoad)> = self
            .spill
            .peers
            .iter()
            .filter(|(p, _)| self.spill.alive(p))
            .collect();
        peers.sort_by_key(|(p, l)| {
            let cpu = l.estimated_free_now().get_milli(shoal_protocol::CPU);
            (std::cmp::Reverse(cpu), **p)
        });
        for (p, l) in &peers {
            rooms.push((Some(**p), l.estimated_free_now()));
        }
        let Some(sites) = plan(&g.bundles, &g.sites, g.strategy, &rooms) else {
            // Could it ever be placed, were everything free?
            let mut totals: Vec<(Site, ResourceSet)> = vec![(None, self.sched.total().clone())];
            totals.extend(
                peers
                    .iter()
                    .map(|(p, l)| (Some(**p), l.report.total.clone())),
            );
            let feasible = plan(&g.bundles, &g.sites, g.strategy, &totals).is_some();
            if !feasible && now.saturating_duration_since(g.since) >= INFEASIBLE_GRACE {
                let demand = describe(&g.bundles, g.strategy);
                let total = format!(
                    "{} here, and no set of peers of the mesh has it",
                    self.sched.total()
                );
                self.fail_group(now, group, TaskError::Infeasible { demand, total });
                return;
            }
            // With a sample of loads, more peers are asked (and those with the resources
            // few have).
            let names = ResourceSet(
                g.bundles
                    .iter()
                    .flat_map(|b| b.0.keys().map(|k| (k.clone(), 0)))
                    .collect(),
            );
            let bundles = g.bundles.len();
            self.spill.want_loads(bundles, &names);
            return;
        };
        let here: Vec<(u32, ResourceSet)> = sites
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| (*i, g.bundles[*i as usize].clone()))
            .collect();
        let mut by_peer: HashMap<PeerKey, Vec<(u32, ResourceSet)>> = HashMap::new();
        for (i, s) in &sites {
            if let Some(p) = s {
                by_peer
                    .entry(*p)
                    .or_default()
                    .push((*i, g.bundles[*i as usize].clone()));
            }
        }
        if !here.is_empty() && !self.hold_bundles(now, group, None, here) {
            return;
        }
        let mut waiting: Vec<PeerKey> = by_peer.keys().copied().collect();
        waiting.sort();
        for p in &waiting {
            let bundles = by_peer.remove(p).unwrap_or_default();
            self.tell_peer(*p, PeerMsg::GroupPrepare { group, bundles });
        }
        let done = waiting.is_empty();
        if let Some(g) = self.groups.placed.get_mut(&group) {
            g.round = Some(Round { sites, waiting });
        }
        if done {
            self.commit_round(now, group);
        }
    }

    /// Sets `bundles` of `group` aside here for `placer`, all or none; says whether it did.
    fn hold_bundles(
        &mut self,
        now: Instant,
        group: GroupId,
        placer: Site,
        bundles: Vec<(u32, ResourceSet)>,
    ) -> bool {
        let more = Held {
            placer,
            bundles,
            committed: 0,
            prepared: now,
        };
        if let Some(h) = self.groups.held.get(&group) {
            // More bundles of a group it holds (placed again after a loss): from the same
            // placer, none it holds already, and not while others wait for their commit.
            let again = more
                .bundles
                .iter()
                .any(|(i, _)| h.bundles.iter().any(|(j, _)| i == j));
            if h.placer != placer || h.committed < h.bundles.len() || again {
                return false;
            }
        }
        if !self.sched.reserve(&more.sum()) {
            return false;
        }
        match self.groups.held.get_mut(&group) {
            Some(h) => {
                h.bundles.extend(more.bundles);
                h.prepared = now;
            }
            None => {
                self.groups.held.insert(group, more);
            }
        }
        true
    }

    /// Offers the bundles held for `group` under their group's names.
    fn commit_held(&mut self, now: Instant, group: GroupId) {
        let Some(h) = self.groups.held.get_mut(&group) else {
            return;
        };
        let mut offered = ResourceSet::new();
        for (i, b) in &h.bundles[h.committed..] {
            offered.add(&bundle_resources(b, group, *i));
        }
        h.committed = h.bundles.len();
        self.sched.offer(now, &offered);
    }

    /// Every node of the current round said yes: the bundles are offered, and the group is
    /// ready once all are.
    fn commit_round(&mut self, now: Instant, group: GroupId) {
        let Some(g) = self.groups.placed.get_mut(&group) else {
            return;
        };
        let Some(round) = g.round.take() else {
            return;
        };
        for (i, s) in &round.sites {
            g.sites[*i as usize] = Some(*s);
        }
        let mut peers: Vec<PeerKey> = round.sites.iter().filter_map(|(_, s)| *s).collect();
        peers.sort();
        peers.dedup();
        let mut offered: HashMap<PeerKey, ResourceSet> = HashMap::new();
        for (i, s) in &round.sites {
            if let Some(p) = s {
                offered.entry(*p).or_default().add(&bundle_resources(
                    &g.bundles[*i as usize],
                    group,
                    *i,
                ));
            }
        }
        let all = g.sites.iter().all(Option::is_some);
        let first = all && !g.told;
        if all {
            g.told = true;
        }
        let parked = if all {
            std::mem::take(&mut g.parked)
        } else {
            Vec::new()
        };
        if round.sites.iter().any(|(_, s)| s.is_none()) {
            self.commit_held(now, group);
        }
        for p in peers {
            self.tell_peer(p, PeerMsg::GroupCommit { group });
            // What this node knows of the peer includes them at once (its next report will).
            if let (Some(l), Some(o)) = (self.spill.peers.get_mut(&p), offered.get(&p)) {
                l.report.total.add(o);
                l.report.free.add(o);
            }
        }
        tracing::debug!(%group, all, "placement group bundles committed");
        if first {
            self.object_ready(
                now,
                ObjectId::for_group(group),
                ObjectValue::Inline(Vec::new()),
            );
        }
        for t in parked {
            self.place_task(now, t);
        }
    }

    /// The group can never be placed: it ends with `error`.
    fn fail_group(&mut self, now: Instant, group: GroupId, error: TaskError) {
        tracing::info!(%group, %error, "placement group cannot be placed");
        let Some(g) = self.groups.placed.get_mut(&group) else {
            return;
        };
        if !g.told {
            g.told = true;
            self.object_ready(
                now,
                ObjectId::for_group(group),
                ObjectValue::Error(error.clone()),
            );
        }
        self.remove_group(now, group, &error.to_string());
    }

    /// Groups waiting for room are looked at again, and bundles set aside for peers that
    /// did not commit them in time are freed.
    pub(super) fn groups_pass(&mut self, now: Instant) {
        let mut stale: Vec<(GroupId, PeerKey)> = self
            .groups
            .held
            .iter()
            .filter(|(_, h)| h.committed < h.bundles.len())
            .filter(|(_, h)| now.saturating_duration_since(h.prepared) >= PREPARE_TIMEOUT)
            .filter_map(|(id, h)| h.placer.map(|p| (*id, p)))
            .collect();
        stale.sort();
        for (group, placer) in stale {
            tracing::warn!(%group, %placer, "placement group bundles set aside for a peer that never committed them; freed");
            self.drop_uncommitted(now, group);
            // If it still waits for this node's answer, it learns the bundles are gone.
            self.tell_peer(placer, PeerMsg::GroupPrepared { group, ok: false });
        }
        let mut waiting: Vec<GroupId> = self
            .groups
            .placed
            .iter()
            .filter(|(_, g)| g.round.is_none() && g.sites.iter().any(Option::is_none))
            .map(|(id, _)| *id)
            .collect();
        waiting.sort();
        for group in waiting {
            self.place_group(now, group);
        }
    }

    /// Sets the next look at groups waiting for room, if any wait.
    pub(super) fn groups_after(&mut self, now: Instant) {
        let waiting = self
            .groups
            .placed
            .values()
            .any(|g| g.round.is_none() && g.sites.iter().any(Option::is_none))
            || self
                .groups
                .held
                .values()
                .any(|h| h.placer.is_some() && h.committed < h.bundles.len());
        if !waiting {
            self.groups.next_pass = None;
        } else if self.groups.next_pass.is_none() {
            self.groups.next_pass = Some(now + SPILL_INTERVAL);
        }
    }

    /// A placement group message from a peer.
    pub(super) fn group_msg(&mut self, now: Instant, peer: PeerKey, msg: PeerMsg) {
        match msg {
            PeerMsg::GroupPrepare { group, bundles } => {
                let sane = !bundles.is_empty()
                    && bundles.len() <= MAX_BUNDLES
                    && invalid(&bundles.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>())
                        .is_none();
                let ok = sane && self.hold_bundles(now, group, Some(peer), bundles);
                tracing::debug!(%group, %peer, ok, "placement group bundles asked");
                self.tell_peer(peer, PeerMsg::GroupPrepared { group, ok });
            }
            PeerMsg::GroupCommit { group } => match self.groups.held.get(&group) {
                Some(h) if h.placer == Some(peer) => self.commit_held(now, group),
                _ => self.rights.refuse(now, peer, Refused::Group, group),
            },
            PeerMsg::GroupRelease {
                group,
                reason,
                aborted,
            } => match self.groups.held.get(&group) {
                Some(h) if h.placer == Some(peer) && aborted => self.drop_uncommitted(now, group),
                Some(h) if h.placer == Some(peer) => self.release_held(now, group, &reason),
                Some(_) => self.rights.refuse(now, peer, Refused::Group, group),
                // Released already (or never held: a prepare this node said no to).
                None => {}
            },
            PeerMsg::GroupPrepared { group, ok } => self.group_prepared(now, peer, group, ok),
            PeerMsg::GroupRemove { group, token } => {
                self.remove_group_for(now, Party::Peer(peer), group, token, None)
            }
            _ => {}
        }
    }

    fn group_prepared(&mut self, now: Instant, peer: PeerKey, group: GroupId, ok: bool) {
        let Some(round) = self
            .groups
            .placed
            .get_mut(&group)
            .and_then(|g| g.round.as_mut())
            .filter(|r| r.waiting.contains(&peer))
        else {
            // A late yes to a round of a group placed here that ended without it (the peer
            // was lost, say) sets bundles aside there for nothing: they are taken back at
            // once, rather than after the peer's prepare timeout. (Bundles committed there
            // stay; so do those of a round under way there. A group unknown here is left to
            // that timeout.)
            let late = self.groups.placed.get(&group).is_some_and(|g| {
                !g.round
                    .as_ref()
                    .is_some_and(|r| r.sites.iter().any(|(_, s)| *s == Some(peer)))
            });
            if ok && late {
                tracing::debug!(%group, %peer, "a late answer to a prepare; its bundles there are taken back");
                let msg = PeerMsg::GroupRelease {
                    group,
                    reason: "its placement there was given up".into(),
                    aborted: true,
                };
                self.tell_peer(peer, msg);
            } else {
                tracing::debug!(%group, %peer, "an answer to a prepare nobody is waiting for; ignored");
            }
            return;
        };
        round.waiting.retain(|p| *p != peer);
        if ok {
            if round.waiting.is_empty() {
                self.commit_round(now, group);
            }
            return;
        }
        tracing::debug!(%group, %peer, "a peer had no room for its bundles; placing again later");
        self.abort_round(now, group, Some(peer));
    }

    /// The current round of `group` failed: whatever its nodes set aside is freed (`refuser`
    /// holds nothing), and the group waits for room again.
    fn abort_round(&mut self, now: Instant, group: GroupId, refuser: Option<PeerKey>) {
        let Some(round) = self
            .groups
            .placed
            .get_mut(&group)
            .and_then(|g| g.round.take())
        else {
            return;
        };
        let mut sites: Vec<Site> = round.sites.iter().map(|(_, s)| *s).collect();
        sites.sort();
        sites.dedup();
        for site in sites {
            if site.is_some() && site == refuser {
                continue;
            }
            // (Bundles of the group committed there before stay.)
            self.release_at(now, group, site, "its placement was aborted", true);
        }
    }

    /// Takes back the bundles of `group` that this node set aside and did not commit.
    fn drop_uncommitted(&mut self, now: Instant, group: GroupId) {
        let Some(h) = self.groups.held.get_mut(&group) else {
            return;
        };
        let mut back = ResourceSet::new();
        for (_, b) in h.bundles.drain(h.committed..) {
            back.add(&b);
        }
        if h.bundles.is_empty() {
            self.groups.held.remove(&group);
        }
        self.sched.unreserve(now, &back);
    }

    /// `party` is gone: the groups its process created end (unless detached); for a peer,
    /// the bundles it placed here are freed, and the bundles of this node's groups it held
    /// are placed again.
    pub(super) fn groups_party_gone(&mut self, now: Instant, party: Party) {
        let mut ended: Vec<GroupId> = self
            .groups
            .placed
            .iter()
            .filter(|(_, g)| g.creator == party && !g.detached)
            .map(|(id, _)| *id)
            .collect();
        ended.sort();
        for group in ended {
            self.remove_group(now, group, "the process that created it ended");
        }
        let Party::Peer(peer) = party else {
            return;
        };
        let mut freed: Vec<GroupId> = self
            .groups
            .held
            .iter()
            .filter(|(_, h)| h.placer == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        freed.sort();
        for group in freed {
            let reason = format!("peer {peer}, which placed it, was lost");
            self.release_held(now, group, &reason);
        }
        let mut ours: Vec<GroupId> = self.groups.placed.keys().copied().collect();
        ours.sort();
        for group in ours {
            let in_round = self.groups.placed.get(&group).is_some_and(|g| {
                g.round
                    .as_ref()
                    .is_some_and(|r| r.sites.iter().any(|(_, s)| *s == Some(peer)))
            });
            if in_round {
                self.abort_round(now, group, Some(peer));
            }
            let Some(g) = self.groups.placed.get_mut(&group) else {
                continue;
            };
            let mut lost = 0;
            for s in g.sites.iter_mut() {
                if *s == Some(Some(peer)) {
                    *s = None;
                    lost += 1;
                }
            }
            if lost > 0 {
                tracing::warn!(%group, %peer, bundles = lost, "placement group bundles lost with their peer; placing them again");
                g.since = now;
                self.place_group(now, group);
            }
        }
    }
}

#[cfg(test)]
mod tests;
