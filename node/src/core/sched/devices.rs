//! GPU devices, as Ray assigns them (`ray.get_gpu_ids()`, `CUDA_VISIBLE_DEVICES`): the node's
//! `GPU` resource is whole devices, and a worker whose lease holds some of it is given
//! particular ones for as long as it holds it. A demand of one or more takes that many whole
//! devices; a fraction takes part of one device, packed with other fractions (best fit).
//!
//! The scheduler keeps the total demand within the node's `GPU`; this only chooses which
//! devices. Fractions can fragment (0.6 free on each of two devices cannot hold 1.0): then the
//! least used devices are shared, and the caller logs it.

use std::collections::BTreeMap;

/// Milli-units in a whole device (resource amounts are counted in milli-units).
const WHOLE: u64 = 1000;

/// The node's devices and who holds which.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    /// The ids of the devices (the node's own `CUDA_VISIBLE_DEVICES`, or 0..n).
    ids: Vec<u32>,
    /// Milli-units in use on each device, by index into `ids`.
    used: Vec<u64>,
    /// What each worker holds: device index and milli-units.
    held: BTreeMap<u64, Vec<(usize, u64)>>,
}

/// What [`Devices::assign`] gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Assigned {
    /// The device ids, in order.
    pub ids: Vec<u32>,
    /// Some device had to be shared past its capacity (fragmented fractions).
    pub oversubscribed: bool,
}

impl Devices {
    /// `count` devices with these ids (`0..count` when `ids` is empty).
    pub(crate) fn new(count: usize, ids: &[u32]) -> Self {
        let ids: Vec<u32> = if ids.is_empty() {
            (0..count as u32).collect()
        } else {
            ids.iter().copied().take(count).collect()
        };
        Self {
            used: vec![0; ids.len()],
            ids,
            held: BTreeMap::new(),
        }
    }

    /// The devices `worker` holds, if it holds `milli` milli-units of them.
    pub(crate) fn held_by(&self, worker: u64, milli: u64) -> Option<Vec<u32>> {
        let held = self.held.get(&worker)?;
        let amount: u64 = held.iter().map(|(_, m)| m).sum();
        let whole = milli.div_ceil(WHOLE) * WHOLE;
        (amount == milli || (milli >= WHOLE && amount == whole))
            .then(|| held.iter().map(|(i, _)| self.ids[*i]).collect())
    }

    /// Gives `worker` devices for `milli` milli-units of GPU (whatever it held before goes
    /// back first).
    pub(crate) fn assign(&mut self, worker: u64, milli: u64) -> Assigned {
        self.release(worker);
        let mut out = Assigned {
            ids: Vec::new(),
            oversubscribed: false,
        };
        if milli == 0 || self.ids.is_empty() {
            return out;
        }
        let mut held = Vec::new();
        if milli >= WHOLE {
            // Whole devices (Ray rounds a demand above one to whole devices): free ones
            // first, in order, then the least used.
            let want = milli.div_ceil(WHOLE) as usize;
            let mut order: Vec<usize> = (0..self.ids.len()).collect();
            order.sort_by_key(|i| (self.used[*i], *i));
            for i in order.into_iter().take(want) {
                out.oversubscribed |= self.used[i] > 0;
                held.push((i, WHOLE));
            }
        } else {
            // A fraction: the fullest device it fits on (best fit), else the least used.
            let fits = (0..self.ids.len())
                .filter(|i| self.used[*i] + milli <= WHOLE)
                .max_by_key(|i| (self.used[*i], std::cmp::Reverse(*i)));
            let i = fits.unwrap_or_else(|| {
                out.oversubscribed = true;
                (0..self.ids.len())
                    .min_by_key(|i| (self.used[*i], *i))
                    .unwrap_or(0)
            });
            held.push((i, milli));
        }
        held.sort_by_key(|(i, _)| *i);
        for (i, m) in &held {
            self.used[*i] += m;
        }
        out.ids = held.iter().map(|(i, _)| self.ids[*i]).collect();
        self.held.insert(worker, held);
        out
    }

    /// `worker` holds no device any more.
    pub(crate) fn release(&mut self, worker: u64) {
        for (i, m) in self.held.remove(&worker).unwrap_or_default() {
            self.used[i] = self.used[i].saturating_sub(m);
        }
    }

    /// The workers that hold devices.
    pub(crate) fn holders(&self) -> impl Iterator<Item = u64> + '_ {
        self.held.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_devices_go_to_one_worker_each_and_come_back() {
        let mut d = Devices::new(4, &[]);
        let a = d.assign(1, 2000);
        assert_eq!(a.ids, vec![0, 1]);
        assert!(!a.oversubscribed);
        assert_eq!(d.assign(2, 1000).ids, vec![2]);
        assert_eq!(d.assign(3, 1000).ids, vec![3]);
        d.release(2);
        assert_eq!(d.assign(4, 1000).ids, vec![2]);
        assert_eq!(d.held_by(1, 2000), Some(vec![0, 1]));
        assert_eq!(
            d.held_by(1, 1500),
            Some(vec![0, 1]),
            "rounded up to whole devices"
        );
        assert_eq!(d.held_by(1, 1000), None, "held for another amount");
        assert_eq!(d.held_by(2, 1000), None);
        // Nothing free: shared, and said so.
        assert!(d.assign(5, 1000).oversubscribed);
    }

    #[test]
    fn fractions_pack_onto_the_fullest_device_they_fit() {
        let mut d = Devices::new(2, &[]);
        assert_eq!(d.assign(1, 500).ids, vec![0]);
        assert_eq!(d.assign(2, 300).ids, vec![0]);
        // 0.3 does not fit on device 0 (0.8 used): device 1.
        assert_eq!(d.assign(3, 300).ids, vec![1]);
        assert_eq!(d.assign(4, 200).ids, vec![0]);
        // A whole device: the free part of device 1 is not enough; the least used is shared.
        let whole = d.assign(5, 1000);
        assert_eq!(whole.ids, vec![1]);
        assert!(whole.oversubscribed);
    }

    #[test]
    fn the_nodes_own_device_ids_are_given_out() {
        // A node started with CUDA_VISIBLE_DEVICES=2,5.
        let mut d = Devices::new(2, &[2, 5]);
        assert_eq!(d.assign(1, 1000).ids, vec![2]);
        assert_eq!(d.assign(2, 500).ids, vec![5]);
        // Reassigning a worker gives back what it held first.
        assert_eq!(d.assign(1, 2000).ids, vec![2, 5]);
        assert!(d.assign(1, 2000).oversubscribed);
        assert_eq!(d.holders().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.assign(3, 0).ids, Vec::<u32>::new());
        assert_eq!(Devices::new(0, &[]).assign(1, 1000).ids, Vec::<u32>::new());
    }
}
