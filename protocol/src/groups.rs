//! Placement groups (Ray's): bundles of resources reserved together across the mesh, and
//! the names under which a node offers a reserved bundle to the tasks and actors of its group.
//!
//! As in Ray, a bundle reserved at a node becomes resources of its own there: bundle `i` of
//! group `g` asking `{CPU: 2}` adds `CPU_group_i_g = 2` (this bundle) and `CPU_group_g = 2`
//! (any bundle of the group on this node), and marker resources `bundle_group_i_g` and
//! `bundle_group_g` that every task of the group asks a thousandth of, so that even a task
//! that asks nothing runs inside its bundle. A task scheduled into a group asks for the
//! renamed resources instead of its own ([`in_group`]); the ordinary placement then sends it
//! to the node that holds them, and nowhere else can run it.
//!
//! ```
//! use shoal_protocol::{groups, GroupId, ResourceSet};
//! let g = GroupId([7; 16]);
//! let bundle = groups::bundle_resources(&ResourceSet::cpus(2.0), g, 0);
//! let task = groups::in_group(&ResourceSet::cpus(1.0), g, Some(0));
//! assert!(bundle.contains(&task));
//! // Bundle 1 of the same group offers nothing a task of bundle 0 asks.
//! assert!(!groups::bundle_resources(&ResourceSet::cpus(2.0), g, 1).contains(&task));
//! ```

use serde::{Deserialize, Serialize};

use crate::ids::GroupId;
use crate::messages::ResourceSet;

/// The most bundles a placement group may have.
pub const MAX_BUNDLES: usize = 1024;

/// Units (in thousandths) of a bundle's marker resource: a task of the group asks one.
const MARKER_MILLI: u64 = 1_000_000;

/// How a placement group's bundles are spread over the mesh (Ray's strategies).
///
/// ```
/// # use shoal_protocol as shoal;
/// use shoal::GroupStrategy;
/// assert_eq!(GroupStrategy::default(), GroupStrategy::Pack); // as Ray's default
/// // Replicas that must not share a machine: each bundle on its own peer, or none placed.
/// let replicas = GroupStrategy::StrictSpread;
/// assert_eq!(replicas.to_string(), "STRICT_SPREAD");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupStrategy {
    /// As few nodes as possible: all on one node if one has room, else packed onto the
    /// fewest (Ray's `"PACK"`, its default).
    #[default]
    Pack,
    /// Each bundle on a different node where there are enough, else as spread as can be
    /// (Ray's `"SPREAD"`).
    Spread,
    /// All bundles on one node, or none placed (Ray's `"STRICT_PACK"`).
    StrictPack,
    /// Each bundle on a different node, or none placed (Ray's `"STRICT_SPREAD"`).
    StrictSpread,
}

impl std::fmt::Display for GroupStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GroupStrategy::Pack => "PACK",
            GroupStrategy::Spread => "SPREAD",
            GroupStrategy::StrictPack => "STRICT_PACK",
            GroupStrategy::StrictSpread => "STRICT_SPREAD",
        })
    }
}

fn indexed(name: &str, group: GroupId, index: u32) -> String {
    format!("{name}_group_{index}_{group}")
}

fn wildcard(name: &str, group: GroupId) -> String {
    format!("{name}_group_{group}")
}

/// What a node offers once it holds bundle `index` of `group`, which asks `bundle`.
pub fn bundle_resources(bundle: &ResourceSet, group: GroupId, index: u32) -> ResourceSet {
    let mut out = ResourceSet::new();
    for (name, milli) in &bundle.0 {
        out.0.insert(indexed(name, group, index), *milli);
        out.0.insert(wildcard(name, group), *milli);
    }
    out.0.insert(indexed("bundle", group, index), MARKER_MILLI);
    out.0.insert(wildcard("bundle", group), MARKER_MILLI);
    out
}

/// What a task or actor asking `demand` asks once it is scheduled into `group`: into
/// bundle `bundle`, or into any bundle of the group with `None`.
pub fn in_group(demand: &ResourceSet, group: GroupId, bundle: Option<u32>) -> ResourceSet {
    let mut out = ResourceSet::new();
    for (name, milli) in &demand.0 {
        out.0.insert(wildcard(name, group), *milli);
        if let Some(i) = bundle {
            out.0.insert(indexed(name, group, i), *milli);
        }
    }
    out.0.insert(wildcard("bundle", group), 1);
    if let Some(i) = bundle {
        out.0.insert(indexed("bundle", group, i), 1);
    }
    out
}

/// Whether a resource's name is one of those a bundle of `group` offers (the group's id
/// is written once, for the many names it is then asked about).
pub fn group_resources(group: GroupId) -> impl Fn(&str) -> bool + Clone {
    let suffix = format!("_{group}");
    move |name: &str| name.ends_with(&suffix) && name.contains("_group_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bundles_on_one_node_offer_their_sum_to_any_bundle_tasks() {
        let g = GroupId([1; 16]);
        let mut node = bundle_resources(&ResourceSet::cpus(1.0), g, 0);
        node.add(&bundle_resources(&ResourceSet::cpus(1.0), g, 1));
        assert!(node.contains(&in_group(&ResourceSet::cpus(2.0), g, None)));
        assert!(!node.contains(&in_group(&ResourceSet::cpus(2.0), g, Some(0))));
        // A task asking nothing still asks a marker of its bundle.
        let empty = in_group(&ResourceSet::new(), g, Some(1));
        assert!(node.contains(&empty));
        assert!(!bundle_resources(&ResourceSet::cpus(1.0), g, 0).contains(&empty));
        // Another group's bundle is not this one's.
        let other = bundle_resources(&ResourceSet::cpus(4.0), GroupId([2; 16]), 0);
        assert!(!other.contains(&in_group(&ResourceSet::new(), g, None)));
        let of_g = group_resources(g);
        assert!(node.0.keys().all(|k| of_g(k)));
        assert!(!other.0.keys().any(|k| of_g(k)));
        assert!(!of_g("CPU"));
    }
}
