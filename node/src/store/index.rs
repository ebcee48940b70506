//! The store's bookkeeping, with no I/O: capacity, reservations, where each object's bytes
//! are (memory, disk or both), pins, and which objects to evict or spill to make room.
//!
//! Policy (as Ray's): memory holds at most `capacity` bytes of reservations and sealed
//! objects. To make room, copies that also exist on disk (restored after a spill) are dropped
//! first, least recently used first; then sealed objects are spilled to disk, least recently
//! used first. Pinned objects (arguments of running tasks, objects being written) stay. A
//! request that cannot fit even after that is refused with the sizes.

use std::collections::HashMap;

use shoal_protocol::{Digest, ObjectId, SharedObject, StoreError};

/// Who made a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A local process (driver or worker), by its connection number.
    Proc(u64),
    /// The node itself (a copy it pulls from a peer).
    Node,
}

/// Where an object's bytes are in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mem {
    /// Not in memory (spilled).
    None,
    /// Being written by `holder` into its partial file.
    Reserved { holder: Holder },
    /// Sealed, in the store directory.
    Sealed,
}

#[derive(Clone, Debug)]
struct Entry {
    size: u64,
    digest: Option<Digest>,
    mem: Mem,
    /// A copy is in the spill directory.
    disk: bool,
    pins: u32,
    last_use: u64,
}

/// Where an object is, as [`StoreIndex::location`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Reserved, being written.
    Writing,
    /// In memory only.
    Memory,
    /// On disk only: read it back before use.
    Disk,
    /// In memory, and a copy on disk (memory may be dropped without writing).
    Both,
}

/// What to do to make room; the store carries it out, reporting each step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Memory copies to drop (each also exists on disk).
    pub evict: Vec<ObjectId>,
    /// Objects to copy to disk, then drop from memory.
    pub spill: Vec<ObjectId>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.evict.is_empty() && self.spill.is_empty()
    }
}

/// What a seal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// A new object.
    New,
    /// An object with this id (equal bytes) was there already: the reservation is dropped.
    Duplicate,
}

/// Capacity accounting and object locations, with no I/O.
#[derive(Debug)]
pub struct StoreIndex {
    capacity: u64,
    used: u64,
    spilled_bytes: u64,
    tick: u64,
    entries: HashMap<ObjectId, Entry>,
}

impl StoreIndex {
    /// An empty index of `capacity` bytes of memory.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            spilled_bytes: 0,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Whether the store knows `id` (reserved, sealed or spilled).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.entries.contains_key(id)
    }

    /// What would make room for `size` more bytes, or why nothing can.
    pub fn plan_room(&self, size: u64) -> Result<Plan, StoreError> {
        let full = || StoreError::Full {
            requested: size,
            used: self.used,
            capacity: self.capacity,
        };
        if size > self.capacity {
            return Err(full());
        }
        let mut need = (self.used + size).saturating_sub(self.capacity);
        let mut plan = Plan::default();
        if need == 0 {
            return Ok(plan);
        }
        let mut candidates: Vec<(u64, bool, ObjectId, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.mem == Mem::Sealed && e.pins == 0)
            // Copies with a disk twin first (cheap to drop), then by age.
            .map(|(id, e)| (u64::from(!e.disk), e.disk, *id, e.last_use))
            .collect();
        candidates.sort_by_key(|(spill_cost, _, _, last_use)| (*spill_cost, *last_use));
        for (_, on_disk, id, _) in candidates {
            if need == 0 {
                break;
            }
            let size = self.entries[&id].size;
            if on_disk {
                plan.evict.push(id);
            } else {
                plan.spill.push(id);
            }
            need = need.saturating_sub(size);
        }
        if need > 0 {
            return Err(full());
        }
        Ok(plan)
    }

    /// Reserves `size` bytes of memory for a writer. Call [`Self::plan_room`] and carry out
    /// its plan first; this fails if the room is still not there.
    pub fn reserve(&mut self, id: ObjectId, size: u64, holder: Holder) -> Result<(), StoreError> {
        if self.entries.contains_key(&id) {
            return Err(StoreError::Mismatch(format!("object {id} exists")));
        }
        self.take(size)?;
        let last_use = self.next_tick();
        self.entries.insert(
            id,
            Entry {
                size,
                digest: None,
                mem: Mem::Reserved { holder },
                disk: false,
                pins: 0,
                last_use,
            },
        );
        Ok(())
    }

    fn take(&mut self, size: u64) -> Result<(), StoreError> {
        if self.used.saturating_add(size) > self.capacity {
            return Err(StoreError::Full {
                requested: size,
                used: self.used,
                capacity: self.capacity,
            });
        }
        self.used += size;
        Ok(())
    }

    /// Seals the reservation `ticket` as object `id`. With `ticket != id` (a content-addressed
    /// put) and `id` already known, the reservation is dropped: [`Sealed::Duplicate`].
    pub fn seal(
        &mut self,
        ticket: ObjectId,
        id: ObjectId,
        object: SharedObject,
    ) -> Result<Sealed, StoreError> {
        match self.entries.get(&ticket) {
            Some(e) if matches!(e.mem, Mem::Reserved { .. }) && e.size == object.size => {}
            Some(e) if matches!(e.mem, Mem::Reserved { .. }) => {
                return Err(StoreError::Mismatch(format!(
                    "object {id} reserved {} bytes but sealed {}",
                    e.size, object.size
                )))
            }
            Some(_) => {
                return Err(StoreError::Mismatch(format!(
                    "object {ticket} is already sealed"
                )))
            }
            None => {
                return Err(StoreError::Mismatch(format!(
                    "object {ticket} was never reserved"
                )))
            }
        }
        if ticket != id && self.entries.contains_key(&id) {
            self.remove(&ticket);
            self.touch(&id);
            return Ok(Sealed::Duplicate);
        }
        let mut e = self.entries.remove(&ticket).ok_or_else(|| {
            StoreError::Mismatch(format!("object {ticket} vanished while sealing"))
        })?;
        e.mem = Mem::Sealed;
        e.digest = object.digest;
        e.last_use = self.next_tick();
        self.entries.insert(id, e);
        Ok(Sealed::New)
    }

    /// Forgets `id`. Returns where its files were: (a memory file or partial, a disk file).
    pub fn remove(&mut self, id: &ObjectId) -> Option<(Option<Location>, bool)> {
        let e = self.entries.remove(id)?;
        let mem = match e.mem {
            Mem::None => None,
            Mem::Reserved { .. } => {
                self.used -= e.size;
                Some(Location::Writing)
            }
            Mem::Sealed => {
                self.used -= e.size;
                Some(Location::Memory)
            }
        };
        if e.disk {
            self.spilled_bytes -= e.size;
        }
        Some((mem, e.disk))
    }

    /// `id` was used: it is the last to be evicted or spilled.
    pub fn touch(&mut self, id: &ObjectId) {
        let t = self.next_tick();
        if let Some(e) = self.entries.get_mut(id) {
            e.last_use = t;
        }
    }

    /// Keeps `id` in memory until [`Self::unpin`] (a running task reads it).
    pub fn pin(&mut self, id: &ObjectId) {
        if let Some(e) = self.entries.get_mut(id) {
            e.pins += 1;
        }
    }

    /// Undoes one [`Self::pin`].
    pub fn unpin(&mut self, id: &ObjectId) {
        if let Some(e) = self.entries.get_mut(id) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// The object's copy was written to disk; its memory is free.
    pub fn spilled(&mut self, id: &ObjectId) {
        if let Some(e) = self.entries.get_mut(id) {
            if e.mem == Mem::Sealed {
                e.mem = Mem::None;
                self.used -= e.size;
            }
            if !e.disk {
                e.disk = true;
                self.spilled_bytes += e.size;
            }
        }
    }

    /// A spill of `id` failed: its memory copy stays (counted again, even past the
    /// capacity: the bytes are there), and it has no disk copy.
    pub fn spill_failed(&mut self, id: &ObjectId) {
        if let Some(e) = self.entries.get_mut(id) {
            if e.mem == Mem::None {
                e.mem = Mem::Sealed;
                self.used += e.size;
            }
            if e.disk {
                e.disk = false;
                self.spilled_bytes -= e.size;
            }
        }
    }

    /// The object's memory copy was dropped (its disk copy stays).
    pub fn evicted(&mut self, id: &ObjectId) {
        if let Some(e) = self.entries.get_mut(id) {
            if e.mem == Mem::Sealed && e.disk {
                e.mem = Mem::None;
                self.used -= e.size;
            }
        }
    }

    /// Takes memory for reading a spilled object back (after its plan was carried out).
    pub fn restoring(&mut self, id: &ObjectId) -> Result<(), StoreError> {
        let size = match self.entries.get(id) {
            Some(e) if e.mem == Mem::None => e.size,
            Some(_) => return Ok(()),
            None => return Err(StoreError::Mismatch(format!("object {id} is unknown"))),
        };
        self.take(size)?;
        let t = self.next_tick();
        if let Some(e) = self.entries.get_mut(id) {
            e.mem = Mem::Sealed;
            e.last_use = t;
        }
        Ok(())
    }

    /// Gives back the memory of a restore that failed.
    pub fn restore_failed(&mut self, id: &ObjectId) {
        if let Some(e) = self.entries.get_mut(id) {
            if e.mem == Mem::Sealed && e.disk {
                e.mem = Mem::None;
                self.used -= e.size;
            }
        }
    }

    /// Where `id` is.
    pub fn location(&self, id: &ObjectId) -> Option<Location> {
        let e = self.entries.get(id)?;
        Some(match (e.mem, e.disk) {
            (Mem::Reserved { .. }, _) => Location::Writing,
            (Mem::Sealed, false) => Location::Memory,
            (Mem::Sealed, true) => Location::Both,
            (Mem::None, _) => Location::Disk,
        })
    }

    /// Size and digest (if taken yet) of a sealed object.
    pub fn sealed(&self, id: &ObjectId) -> Option<SharedObject> {
        let e = self.entries.get(id)?;
        if matches!(e.mem, Mem::Reserved { .. }) {
            return None;
        }
        Some(SharedObject {
            size: e.size,
            digest: e.digest,
        })
    }

    /// Records the digest taken of sealed object `id`, if it has none yet.
    pub fn set_digest(&mut self, id: &ObjectId, digest: Digest) {
        if let Some(e) = self.entries.get_mut(id) {
            if !matches!(e.mem, Mem::Reserved { .. }) {
                e.digest.get_or_insert(digest);
            }
        }
    }

    /// Unsealed reservations of `holder`.
    pub fn reservations_of(&self, holder: Holder) -> Vec<ObjectId> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.mem, Mem::Reserved { holder: h } if h == holder))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `id` is reserved by `holder`.
    pub fn reserved_by(&self, id: &ObjectId, holder: Holder) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| e.mem == Mem::Reserved { holder })
    }

    /// Bytes of memory reserved or sealed.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes of memory no plan can free now: reservations being written, and pinned
    /// objects (arguments of running tasks, objects being read back or sent). They free
    /// themselves (a writer seals, a task ends), so a request refused for room may fit later.
    pub fn held(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| match e.mem {
                Mem::Reserved { .. } => true,
                Mem::Sealed => e.pins > 0,
                Mem::None => false,
            })
            .map(|e| e.size)
            .sum()
    }

    /// The byte limit of memory.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes with a copy on disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    /// Objects with a copy on disk.
    pub fn spilled_count(&self) -> u64 {
        self.entries.values().filter(|e| e.disk).count() as u64
    }

    /// Sealed objects.
    pub fn sealed_count(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| !matches!(e.mem, Mem::Reserved { .. }))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(size: u64) -> SharedObject {
        SharedObject {
            size,
            digest: Some(Digest([size as u8; 32])),
        }
    }

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 32])
    }

    /// Reserves and seals `n` with `size` bytes, carrying out any plan in the index only.
    fn put(ix: &mut StoreIndex, n: u8, size: u64) -> Plan {
        let plan = ix.plan_room(size).unwrap();
        for e in &plan.evict {
            ix.evicted(e);
        }
        for s in &plan.spill {
            ix.spilled(s);
        }
        ix.reserve(id(n), size, Holder::Proc(1)).unwrap();
        assert_eq!(ix.seal(id(n), id(n), obj(size)), Ok(Sealed::New));
        plan
    }

    #[test]
    fn capacity_is_enforced_with_sizes_in_the_error() {
        let mut ix = StoreIndex::new(100);
        put(&mut ix, 1, 60);
        ix.pin(&id(1));
        assert_eq!(
            ix.plan_room(50),
            Err(StoreError::Full {
                requested: 50,
                used: 60,
                capacity: 100
            })
        );
        assert!(matches!(
            ix.plan_room(101),
            Err(StoreError::Full { requested: 101, .. })
        ));
        ix.unpin(&id(1));
        assert_eq!(
            ix.plan_room(50),
            Ok(Plan {
                evict: vec![],
                spill: vec![id(1)]
            })
        );
        assert_eq!(ix.remove(&id(1)), Some((Some(Location::Memory), false)));
        assert_eq!(ix.used(), 0);
    }

    #[test]
    fn held_bytes_are_reservations_and_pinned_objects() {
        let mut ix = StoreIndex::new(100);
        put(&mut ix, 1, 30);
        assert_eq!(ix.held(), 0);
        ix.reserve(id(2), 20, Holder::Proc(1)).unwrap();
        assert_eq!(ix.held(), 20);
        ix.pin(&id(1));
        assert_eq!(ix.held(), 50);
        assert_eq!(ix.seal(id(2), id(2), obj(20)), Ok(Sealed::New));
        ix.unpin(&id(1));
        assert_eq!(ix.held(), 0);
    }

    #[test]
    fn spills_least_recently_used_first_and_restores() {
        let mut ix = StoreIndex::new(100);
        put(&mut ix, 1, 40);
        put(&mut ix, 2, 40);
        ix.touch(&id(1));
        // 2 is older than 1 now: it goes first.
        let plan = put(&mut ix, 3, 40);
        assert_eq!(plan.spill, vec![id(2)]);
        assert_eq!(ix.location(&id(2)), Some(Location::Disk));
        assert_eq!(ix.spilled_bytes(), 40);
        assert_eq!(ix.used(), 80);
        // Reading 2 back needs room: the least recently used (1) is spilled.
        let plan = ix.plan_room(40).unwrap();
        assert_eq!(plan.spill, vec![id(1)]);
        ix.spilled(&id(1));
        ix.restoring(&id(2)).unwrap();
        assert_eq!(ix.location(&id(2)), Some(Location::Both));
        // A restored copy is dropped before anything is written to disk.
        ix.touch(&id(3));
        let plan = ix.plan_room(40).unwrap();
        assert_eq!(
            plan,
            Plan {
                evict: vec![id(2)],
                spill: vec![]
            }
        );
        ix.evicted(&id(2));
        assert_eq!(ix.location(&id(2)), Some(Location::Disk));
        assert_eq!(ix.remove(&id(2)), Some((None, true)));
        assert_eq!(ix.spilled_bytes(), 40);
    }

    #[test]
    fn restored_copies_are_evicted_in_lru_order() {
        let mut ix = StoreIndex::new(100);
        for n in 1..=4 {
            put(&mut ix, n, 25);
        }
        for n in 1..=4 {
            ix.spilled(&id(n));
        }
        for n in [3, 1, 4, 2] {
            ix.restoring(&id(n)).unwrap();
        }
        let plan = ix.plan_room(60).unwrap();
        assert_eq!(plan.evict, vec![id(3), id(1), id(4)]);
        assert!(plan.spill.is_empty());
    }

    #[test]
    fn content_addressed_seal_dedups() {
        let mut ix = StoreIndex::new(100);
        let (t1, t2, content) = (id(1), id(2), id(9));
        ix.reserve(t1, 10, Holder::Proc(7)).unwrap();
        ix.reserve(t2, 10, Holder::Proc(8)).unwrap();
        assert_eq!(ix.used(), 20);
        assert_eq!(ix.seal(t1, content, obj(10)), Ok(Sealed::New));
        assert_eq!(ix.seal(t2, content, obj(10)), Ok(Sealed::Duplicate));
        assert_eq!(ix.used(), 10);
        assert_eq!(ix.sealed(&content), Some(obj(10)));
        assert!(!ix.contains(&t1) && !ix.contains(&t2));
        assert!(matches!(
            ix.seal(content, content, obj(10)),
            Err(StoreError::Mismatch(_))
        ));
    }

    #[test]
    fn seal_must_match_reservation() {
        let mut ix = StoreIndex::new(100);
        let a = id(1);
        assert!(ix.seal(a, a, obj(1)).is_err());
        ix.reserve(a, 10, Holder::Proc(7)).unwrap();
        assert!(matches!(
            ix.seal(a, a, obj(11)),
            Err(StoreError::Mismatch(_))
        ));
        assert_eq!(ix.reservations_of(Holder::Proc(7)), vec![a]);
        assert!(ix.reserved_by(&a, Holder::Proc(7)) && !ix.reserved_by(&a, Holder::Proc(8)));
        ix.seal(a, a, obj(10)).unwrap();
        assert!(ix.reservations_of(Holder::Proc(7)).is_empty());
        assert_eq!(ix.sealed_count(), 1);
        assert_eq!(ix.remove(&id(1)), Some((Some(Location::Memory), false)));
    }
}
