//! Worker pools per set of environment variables (the `env_vars` of Ray's `runtime_env`): a
//! task or actor with environment variables ([`TaskSpec::env`]) runs in a worker started
//! with them. The scheduler pools workers by binary, so each (binary, variables) pair is a
//! binary of its own to it: [`pool_key`] names it, and [`EnvPools`] remembers which real
//! binary and which variables a worker of it is started with.
//!
//! Such a pool is kept (its idle workers stay) while its binary has a program attached here,
//! as the binary's own pool is; otherwise its workers end with their work, as those of a
//! binary shipped by a peer do.

use shoal_protocol::{BinaryId, TaskSpec};

use super::sched::Scheduler;

/// Pools remembered at most (each a binary and its variables); the least recently used go
/// first. A pool forgotten while a worker of it is still to be started fails that start,
/// and its task is placed again.
const MAX_POOLS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(1024) {
    Some(n) => n,
    None => unreachable!(),
};

/// The scheduler's binary for tasks of `binary` with environment variables `env`: the
/// binary itself without any, else one of its own per set of them.
pub(crate) fn pool_key(binary: BinaryId, env: &[(String, String)]) -> BinaryId {
    if env.is_empty() {
        return binary;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"shoal worker pool with environment variables");
    h.update(&binary.0);
    for (name, value) in env {
        for part in [name, value] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    BinaryId(*h.finalize().as_bytes())
}

/// A pool of workers started with environment variables.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The binary its workers run.
    pub(crate) binary: BinaryId,
    /// The variables they are started with.
    pub(crate) env: Vec<(String, String)>,
    /// Counted as live in the scheduler (its binary has a program attached here).
    attached: bool,
}

/// The pools with environment variables that this node's scheduler knows.
#[derive(Debug)]
pub(crate) struct EnvPools(lru::LruCache<BinaryId, Pool>);

impl Default for EnvPools {
    fn default() -> Self {
        Self(lru::LruCache::new(MAX_POOLS))
    }
}

impl EnvPools {
    /// The scheduler's binary for `spec`, its pool remembered (and kept live in `sched`
    /// while `spec`'s binary is).
    pub(crate) fn key_for(&mut self, spec: &TaskSpec, sched: &mut Scheduler) -> BinaryId {
        let key = pool_key(spec.binary, &spec.env);
        if key == spec.binary {
            return key;
        }
        if self.0.get(&key).is_none() {
            let pool = Pool {
                binary: spec.binary,
                env: spec.env.clone(),
                attached: false,
            };
            if let Some((old, gone)) = self.0.push(key, pool) {
                if old != key && gone.attached {
                    sched.binary_detached(old);
                }
            }
        }
        if let Some(pool) = self.0.get_mut(&key) {
            if !pool.attached && sched.is_live(spec.binary) {
                sched.binary_attached(key);
                pool.attached = true;
            }
        }
        key
    }

    /// The pool of scheduler binary `key`, if it is one with variables.
    pub(crate) fn get(&mut self, key: &BinaryId) -> Option<&Pool> {
        self.0.get(key)
    }

    /// `binary` has no program attached here any more: its pools' idle workers go too.
    pub(crate) fn binary_detached(&mut self, binary: BinaryId, sched: &mut Scheduler) {
        if sched.is_live(binary) {
            return;
        }
        for (key, pool) in self.0.iter_mut() {
            if pool.binary == binary && pool.attached {
                sched.binary_detached(*key);
                pool.attached = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_set_of_variables_is_a_pool_of_its_own() {
        let b = BinaryId([1; 32]);
        assert_eq!(pool_key(b, &[]), b);
        let one = pool_key(b, &env(&[("A", "1")]));
        assert_ne!(one, b);
        assert_eq!(one, pool_key(b, &env(&[("A", "1")])));
        assert_ne!(one, pool_key(b, &env(&[("A", "2")])));
        assert_ne!(one, pool_key(BinaryId([2; 32]), &env(&[("A", "1")])));
        // Lengths are hashed: the split between name and value counts.
        assert_ne!(
            pool_key(b, &env(&[("AB", "C")])),
            pool_key(b, &env(&[("A", "BC")]))
        );
    }
}
