//! Placement groups (Ray's `ray.util.placement_group`): bundles of resources reserved
//! together across the mesh, for tasks and actors that must run side by side (`Pack`) or
//! apart (`Spread`), with nothing else taking their room meanwhile.
//!
//! ```no_run
//! use shoal::{GroupStrategy, ResourceSet, TaskOptions};
//! # #[shoal::remote] fn train(shard: u32) -> u32 { shard }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! shoal::init()?;
//! // Two bundles of 1 CPU each, on two different peers, or none at all.
//! let pg = shoal::placement_group(
//!     [ResourceSet::cpus(1.0), ResourceSet::cpus(1.0)],
//!     GroupStrategy::StrictSpread,
//! );
//! pg.ready().get_blocking()?;             // both are reserved (or why they never will be)
//! let a = train.options(TaskOptions::new().strategy(pg.bundle(0))).remote(0);
//! let b = train.options(TaskOptions::new().strategy(pg.bundle(1))).remote(1);
//! assert_eq!(a.get_blocking()? + b.get_blocking()?, 1);
//! shoal::remove_placement_group(&pg);     // frees both; what runs in them ends
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_protocol::{GroupId, GroupStrategy, ObjectId, ResourceSet, Strategy, ToNode};

use crate::error::GetError;
use crate::object_ref::{ObjectRef, RawRef};
use crate::runtime;

/// A placement group: a handle to bundles of resources reserved together.
///
/// Made by [`placement_group`]. It is `Clone` and serializable: a task or actor given it
/// can schedule its own tasks into the group. The group lives until [`remove_placement_group`]
/// or the end of the process that created it (unless made with
/// [`placement_group_detached`]), not until its handles are dropped, as in Ray.
///
/// A task or actor runs in the group with the strategy [`PlacementGroup::bundle`] (on that
/// bundle) or [`PlacementGroup::any_bundle`]: its demand (say `num_cpus(1.0)`) is then taken
/// from what the bundle reserved, on the peer that holds it; a task that asks for more than
/// its bundle holds waits for the bundle's other tasks to end.
///
/// ```no_run
/// use shoal::{ActorOptions, GroupStrategy, PlacementGroup, ResourceSet, TaskOptions};
///
/// #[shoal::remote]
/// fn worker_step(pg: PlacementGroup, step: u32) -> u32 {
///     // A task given the group schedules its own work into it.
///     let more = helper.options(TaskOptions::new().strategy(pg.any_bundle())).remote(step);
///     more.get_blocking().unwrap_or(0)
/// }
/// # #[shoal::remote] fn helper(step: u32) -> u32 { step }
/// # pub struct Ps;
/// # #[shoal::actor] impl Ps { pub fn new() -> Self { Ps } }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = shoal::placement_group(vec![ResourceSet::cpus(1.0); 2], GroupStrategy::Pack);
/// pg.ready().get_blocking()?;
/// let server = Ps::options(ActorOptions::new().num_cpus(1.0).strategy(pg.bundle(0))).remote();
/// let step = worker_step.options(TaskOptions::new().strategy(pg.bundle(1))).remote(pg.clone(), 1);
/// assert_eq!(step.get_blocking()?, 1);
/// # let _ = server; Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlacementGroup {
    id: GroupId,
    bundles: u32,
    ready: ObjectRef<()>,
    /// The secret its removal carries: holding the handle is the right to remove it.
    token: [u8; 16],
    /// The peer id of the node that placed it (its creator's), when in a mesh.
    placer: Option<String>,
}

impl PlacementGroup {
    /// The group's id.
    ///
    /// ```no_run
    /// # let pg = shoal::placement_group([shoal::ResourceSet::cpus(1.0)], Default::default());
    /// println!("group {}", pg.id());
    /// ```
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// How many bundles it has.
    ///
    /// ```no_run
    /// # use shoal::ResourceSet;
    /// let pg = shoal::placement_group(vec![ResourceSet::cpus(1.0); 3], Default::default());
    /// assert_eq!(pg.bundle_count(), 3);
    /// ```
    pub fn bundle_count(&self) -> u32 {
        self.bundles
    }

    /// A ref that becomes `()` once every bundle is reserved (Ray's `pg.ready()`), or fails
    /// with why none ever will be: [`shoal::TaskError::Infeasible`](crate::TaskError::Infeasible)
    /// when no set of peers of the mesh could hold them,
    /// [`TaskError::InvalidOptions`](crate::TaskError::InvalidOptions), or
    /// [`TaskError::GroupRemoved`](crate::TaskError::GroupRemoved) when removed first. It can be
    /// awaited, waited on with [`crate::wait`] beside other refs, or read with a timeout.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), shoal::GetError> {
    /// let pg = shoal::placement_group([shoal::ResourceSet::cpus(1.0)], Default::default());
    /// pg.ready().await?;
    /// # Ok(()) }
    /// ```
    pub fn ready(&self) -> &ObjectRef<()> {
        &self.ready
    }

    /// Waits at most `timeout` for the group to be placed (Ray's `pg.wait(timeout)`):
    /// `Ok(true)` once it is, `Ok(false)` if it is not yet, `Err` if it never will be.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let pg = shoal::placement_group([shoal::ResourceSet::cpus(1.0)], Default::default());
    /// if !pg.wait(Duration::from_secs(10))? {
    ///     eprintln!("still waiting for room");
    /// }
    /// # Ok::<(), shoal::GetError>(())
    /// ```
    pub fn wait(&self, timeout: Duration) -> Result<bool, GetError> {
        match self.ready.get_blocking_timeout(timeout) {
            Ok(()) => Ok(true),
            Err(GetError::Timeout(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The strategy that runs a task or actor on bundle `index` (from 0), as Ray's
    /// `PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)`. A task
    /// submitted before the group is placed waits for it.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn work() -> u32 { 1 }
    /// let pg = shoal::placement_group([shoal::ResourceSet::cpus(1.0)], Default::default());
    /// let r = work.options(shoal::TaskOptions::new().strategy(pg.bundle(0))).remote();
    /// ```
    pub fn bundle(&self, index: u32) -> Strategy {
        Strategy::PlacementGroup {
            group: self.id,
            bundle: Some(index),
        }
    }

    /// The strategy that runs a task or actor on any bundle of the group with room.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn work() -> u32 { 1 }
    /// let pg = shoal::placement_group(vec![shoal::ResourceSet::cpus(1.0); 2], Default::default());
    /// let r = work.options(shoal::TaskOptions::new().strategy(pg.any_bundle())).remote();
    /// ```
    pub fn any_bundle(&self) -> Strategy {
        Strategy::PlacementGroup {
            group: self.id,
            bundle: None,
        }
    }
}

/// Reserves `bundles` together, spread over the mesh as `strategy` says (Ray's
/// `placement_group(bundles, strategy)`). Returns at once; [`PlacementGroup::ready`] says
/// when they are reserved. Until then the group waits for room (a group no set of peers
/// could ever hold fails after a grace period for peers to join). The node this process is
/// attached to places the group, with no head: the peers chosen set the bundles aside, then
/// offer them, in two phases, so a group is reserved whole or not at all.
///
/// ```no_run
/// use shoal::{GroupStrategy, ResourceSet};
/// // One peer with 4 CPUs and a GPU for a trainer and its loader, side by side.
/// let pg = shoal::placement_group(
///     [ResourceSet::cpus(2.0).with("GPU", 1.0), ResourceSet::cpus(2.0)],
///     GroupStrategy::StrictPack,
/// );
/// ```
pub fn placement_group(
    bundles: impl IntoIterator<Item = ResourceSet>,
    strategy: GroupStrategy,
) -> PlacementGroup {
    create(bundles.into_iter().collect(), strategy, false)
}

/// As [`placement_group`], but the group outlives the process that creates it (Ray's
/// `lifetime="detached"`): it lasts until [`remove_placement_group`].
///
/// ```no_run
/// let pg = shoal::placement_group_detached([shoal::ResourceSet::cpus(1.0)], Default::default());
/// ```
pub fn placement_group_detached(
    bundles: impl IntoIterator<Item = ResourceSet>,
    strategy: GroupStrategy,
) -> PlacementGroup {
    create(bundles.into_iter().collect(), strategy, true)
}

fn create(bundles: Vec<ResourceSet>, strategy: GroupStrategy, detached: bool) -> PlacementGroup {
    let ctx = runtime::get();
    let id = GroupId(shoal_node::secret_bytes());
    let token = shoal_node::secret_bytes();
    let ready = ObjectId::for_group(id);
    ctx.add_ref(ready, None);
    let count = bundles.len() as u32;
    ctx.push(ToNode::CreateGroup {
        group: id,
        bundles,
        strategy,
        detached,
        token,
    });
    PlacementGroup {
        id,
        bundles: count,
        ready: ObjectRef::from_raw(RawRef::counted(ready, ctx.client)),
        token,
        placer: ctx.peer_id().map(str::to_string),
    }
}

/// Removes a placement group (Ray's `remove_placement_group`): its bundles are freed on
/// every peer, the tasks running in it fail with
/// [`TaskError::GroupRemoved`](crate::TaskError::GroupRemoved), and its actors end. Any
/// holder of its handle may remove it, wherever in the mesh (the handle carries a secret
/// that the node which placed the group checks: its id alone is not enough).
///
/// ```no_run
/// let pg = shoal::placement_group([shoal::ResourceSet::cpus(1.0)], Default::default());
/// shoal::remove_placement_group(&pg);
/// ```
pub fn remove_placement_group(group: &PlacementGroup) {
    runtime::get().push(ToNode::RemoveGroup {
        group: group.id,
        token: group.token,
        placer: group.placer.clone(),
    });
}
