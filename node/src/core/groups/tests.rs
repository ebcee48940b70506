//! The planner of placement groups, with plain values.

use shoal_protocol::mesh::PeerKey;
use shoal_protocol::{GroupStrategy, ResourceSet};

use super::{plan, Site};

fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes(&[n; 38]).expect("a key")
}

fn rooms(cpus: &[f64]) -> Vec<(Site, ResourceSet)> {
    cpus.iter()
        .enumerate()
        .map(|(i, c)| {
            let site = if i == 0 { None } else { Some(key(i as u8)) };
            (site, ResourceSet::cpus(*c))
        })
        .collect()
}

fn bundles(n: usize, cpus: f64) -> Vec<ResourceSet> {
    vec![ResourceSet::cpus(cpus); n]
}

/// The room each bundle went to (0 is this node).
fn at(sites: &[(u32, Site)]) -> Vec<u8> {
    let mut v: Vec<(u32, u8)> = sites
        .iter()
        .map(|(i, s)| (*i, s.map_or(0, |k| k.as_bytes()[0])))
        .collect();
    v.sort();
    v.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn pack_puts_all_on_one_node_when_one_has_room_else_on_the_fewest() {
    let b = bundles(3, 1.0);
    let none = vec![None; 3];
    let p = plan(&b, &none, GroupStrategy::Pack, &rooms(&[1.0, 3.0, 2.0])).unwrap();
    assert_eq!(at(&p), vec![1, 1, 1]);
    let p = plan(&b, &none, GroupStrategy::Pack, &rooms(&[1.0, 2.0, 1.0])).unwrap();
    let mut nodes = at(&p);
    nodes.dedup();
    assert_eq!(nodes.len(), 2, "{p:?}");
    assert!(plan(&b, &none, GroupStrategy::Pack, &rooms(&[1.0, 1.0])).is_none());
}

#[test]
fn strict_pack_is_one_node_or_nothing() {
    let b = bundles(2, 1.0);
    let none = vec![None; 2];
    assert!(plan(
        &b,
        &none,
        GroupStrategy::StrictPack,
        &rooms(&[1.0, 1.0, 1.0])
    )
    .is_none());
    let p = plan(
        &b,
        &none,
        GroupStrategy::StrictPack,
        &rooms(&[1.0, 1.0, 2.0]),
    )
    .unwrap();
    assert_eq!(at(&p), vec![2, 2]);
    // With one bundle placed already, the other goes to the same node or nowhere.
    let placed = vec![Some(Some(key(1))), None];
    assert!(plan(&b, &placed, GroupStrategy::StrictPack, &rooms(&[4.0, 0.5])).is_none());
    let p = plan(&b, &placed, GroupStrategy::StrictPack, &rooms(&[4.0, 1.0])).unwrap();
    assert_eq!(p, vec![(1, Some(key(1)))]);
}

#[test]
fn spread_uses_distinct_nodes_while_it_can_and_strict_spread_only_them() {
    let b = bundles(3, 1.0);
    let none = vec![None; 3];
    let p = plan(
        &b,
        &none,
        GroupStrategy::StrictSpread,
        &rooms(&[2.0, 2.0, 2.0]),
    )
    .unwrap();
    assert_eq!(at(&p), vec![0, 1, 2]);
    assert!(plan(&b, &none, GroupStrategy::StrictSpread, &rooms(&[4.0, 4.0])).is_none());
    let p = plan(&b, &none, GroupStrategy::Spread, &rooms(&[4.0, 4.0])).unwrap();
    let on_0 = at(&p).iter().filter(|r| **r == 0).count();
    assert!(on_0 == 1 || on_0 == 2, "{p:?}");
    // A node holding a bundle of the group already is not used again by STRICT_SPREAD.
    let placed = vec![Some(None), None, None];
    let p = plan(
        &b,
        &placed,
        GroupStrategy::StrictSpread,
        &rooms(&[4.0, 1.0, 1.0]),
    )
    .unwrap();
    assert_eq!(p, vec![(1, Some(key(1))), (2, Some(key(2)))]);
}
