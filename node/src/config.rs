//! The node's configuration: one validated struct with documented defaults.

use std::path::{Path, PathBuf};

use shoal_protocol::{frame::DEFAULT_MAX_FRAME, ResourceSet};

/// Default size above which values go through the shared-memory store: 64 KiB.
pub const DEFAULT_INLINE_THRESHOLD: u64 = 64 * 1024;

/// Bytes of lineage a node keeps at most, by default (Ray's default cap is 1 GiB per owner).
pub const DEFAULT_LINEAGE_BYTES: u64 = 256 << 20;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The local API socket. Default: [`default_socket_path`].
    pub socket: PathBuf,
    /// CPU slots. Default: the number of cores.
    pub cpus: f64,
    /// Custom resources, `(name, amount)`.
    pub resources: Vec<(String, f64)>,
    /// The ids of this machine's GPU devices that tasks and actors holding `GPU` are given
    /// (Ray's GPU ids). Default: the node's own `CUDA_VISIBLE_DEVICES` if it lists devices,
    /// else one per NVIDIA device the kernel driver lists (`/proc/driver/nvidia/gpus`). When
    /// [`resources`](Self::resources) names no `GPU`, the node has one per device.
    pub gpu_devices: Vec<u32>,
    /// Where the store's directory is made. Default: `/dev/shm` when it exists, else the
    /// temporary directory.
    pub store_parent: PathBuf,
    /// Store capacity in bytes. Default: 30% of memory, at most what `store_parent` has free.
    pub store_bytes: u64,
    /// Where objects are spilled when the store is full (a disk directory). Default:
    /// `shoal-spill-<uid>` in the temporary directory.
    pub spill_parent: PathBuf,
    /// Values up to this many encoded bytes travel inline. Default 64 KiB.
    pub inline_threshold: u64,
    /// Largest frame accepted on the socket. Default 16 MiB.
    pub max_frame: usize,
    /// Worker processes at most. Default: 4 per CPU, at least 8.
    pub max_workers: usize,
    /// Short tasks queued at one worker at most. Default 32.
    pub pipeline_depth: usize,
    /// Whether this node runs inside a driver process.
    pub embedded: bool,
    /// A group whose members may attach to the socket too (besides this user and root). The
    /// socket and the store are then group-accessible. Default: none.
    pub socket_group: Option<String>,
    /// Connections one uid may have attached at once (the node's own workers not counted).
    /// Default [`crate::api::CLIENTS_PER_UID`].
    pub clients_per_uid: usize,
    /// How workers of binaries shipped by peers are sandboxed, and the memory monitor.
    pub sandbox: SandboxConfig,
    /// Bytes of lineage kept at most: the specs of tasks whose large results this node owns
    /// and may have to make again (see `core::lineage`). Default
    /// [`DEFAULT_LINEAGE_BYTES`].
    pub lineage_bytes: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere. Default: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where to serve the web dashboard, if anywhere (needs the `dashboard` feature).
    /// Default: nowhere.
    pub dashboard: Option<std::net::SocketAddr>,
    /// How long a program's task or actor waits for resources before the program is warned
    /// (once a minute per demand while it waits). Default [`DEFAULT_WAIT_WARNING`].
    pub wait_warning: std::time::Duration,
    /// The mesh this node joins, if any.
    #[cfg(feature = "mesh")]
    pub mesh: Option<MeshConfig>,
}

/// How a node joins a mesh of peers.
#[cfg(feature = "mesh")]
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Where the identity key is kept (a restarted node keeps its peer id).
    pub data_dir: PathBuf,
    /// The network settings.
    pub net: crate::net::NetConfig,
}

/// The per-user data directory: `$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`, else
/// `/tmp/shoal-$UID/data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("shoal");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/shoal");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir()
        .join(format!("shoal-{uid}"))
        .join("data")
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The default of [`NodeConfig::wait_warning`].
pub const DEFAULT_WAIT_WARNING: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for NodeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let store_parent = default_store_parent();
        let store_bytes = default_store_bytes(&store_parent);
        Self {
            socket: default_socket_path(),
            cpus,
            resources: Vec::new(),
            gpu_devices: detect_gpus(),
            store_parent,
            store_bytes,
            spill_parent: default_spill_parent(),
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            max_frame: DEFAULT_MAX_FRAME,
            max_workers: ((cpus as usize) * 4).max(8),
            pipeline_depth: 32,
            embedded: false,
            socket_group: None,
            clients_per_uid: crate::api::CLIENTS_PER_UID,
            sandbox: SandboxConfig::default(),
            lineage_bytes: DEFAULT_LINEAGE_BYTES,
            metrics: None,
            dashboard: None,
            wait_warning: DEFAULT_WAIT_WARNING,
            #[cfg(feature = "mesh")]
            mesh: None,
        }
    }
}

impl NodeConfig {
    /// Checks ranges and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(self.cpus >= 0.0 && self.cpus.is_finite()) {
            return bad(format!(
                "cpus must be a non-negative number, not {}",
                self.cpus
            ));
        }
        for (name, amount) in &self.resources {
            if name.is_empty() || name == shoal_protocol::CPU || name.contains(char::is_whitespace)
            {
                return bad(format!("bad resource name {name:?}"));
            }
            if !(*amount >= 0.0 && amount.is_finite()) {
                return bad(format!(
                    "resource {name} must be non-negative, not {amount}"
                ));
            }
        }
        if self.inline_threshold as usize > self.max_frame / 2 {
            return bad(format!(
                "inline threshold {} must be at most half the maximum frame {}",
                self.inline_threshold, self.max_frame
            ));
        }
        if self.max_workers == 0 || self.pipeline_depth == 0 {
            return bad("max_workers and pipeline_depth must be at least 1".into());
        }
        if self.clients_per_uid == 0 {
            return bad("clients_per_uid must be at least 1".into());
        }
        if self.socket_group.as_ref().is_some_and(|g| g.is_empty()) {
            return bad("the socket group has no name".into());
        }
        self.sandbox.validate()?;
        Ok(())
    }

    /// All resources of the node.
    pub fn total_resources(&self) -> ResourceSet {
        let mut r = ResourceSet::cpus(self.cpus);
        for (name, amount) in &self.resources {
            r = r.with(name, *amount);
        }
        if !self.gpu_devices.is_empty() && !self.resources.iter().any(|(n, _)| n == GPU) {
            r = r.with(GPU, self.gpu_devices.len() as f64);
        }
        r
    }
}

/// How a worker started from a binary shipped by a peer is confined, and when the node kills
/// workers because the machine is nearly out of memory. Workers of a local program's own
/// binary run as that program's user, as before, but are watched by the memory monitor too.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// The user shipped code runs as. Default: `nobody` when the node runs as root, else
    /// the node's own user (switching users needs root).
    pub worker_user: Option<String>,
    /// Let a node running as root run shipped code as root (refused otherwise). Default off.
    pub allow_root_workers: bool,
    /// Memory limit of each sandboxed worker, in bytes: a cgroup v2 or v1 limit where the
    /// node can make cgroups, else `RLIMIT_DATA`. Default: none.
    pub worker_memory: Option<u64>,
    /// Whether the memory limit may use cgroups (else it is `RLIMIT_DATA`, for a host whose
    /// cgroups something else manages). Default on.
    pub cgroups: bool,
    /// The share of the machine's memory in use (`1 - MemAvailable / MemTotal`) above which
    /// the node kills the worker with the largest resident set. Default 0.95; 1.0 turns the
    /// monitor off.
    pub memory_threshold: f64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            worker_user: None,
            allow_root_workers: false,
            worker_memory: None,
            cgroups: true,
            memory_threshold: 0.95,
        }
    }
}

impl SandboxConfig {
    /// Checks ranges (the user is looked up when the node starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.memory_threshold > 0.0 && self.memory_threshold <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "memory threshold must be in (0, 1], not {}",
                self.memory_threshold
            )));
        }
        if self.worker_memory.is_some_and(|m| m < 1 << 20) {
            return Err(ConfigError::Invalid(
                "worker memory must be at least 1 MiB".into(),
            ));
        }
        if self.worker_user.as_deref() == Some("") {
            return Err(ConfigError::Invalid("worker user must not be empty".into()));
        }
        Ok(())
    }
}

/// `$SHOAL_SOCKET`, else `$XDG_RUNTIME_DIR/shoal/node.sock`, else `/tmp/shoal-$UID/node.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    user_runtime_dir().join("node.sock")
}

/// A per-user directory for sockets: `$XDG_RUNTIME_DIR/shoal` or `/tmp/shoal-$UID`. The node
/// makes it mode 0700 and refuses it when it exists with another owner or writable by others
/// (see [`crate::runtime::access::private_dir`]).
pub fn user_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("shoal"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("shoal-{}", unsafe { libc::getuid() })),
    }
}

/// The resource whose units are GPU devices (Ray's `num_gpus`).
const GPU: &str = crate::core::sched::GPU;

/// This machine's GPU devices, as [`NodeConfig::gpu_devices`] finds them by default.
pub fn detect_gpus() -> Vec<u32> {
    if let Some(listed) = std::env::var_os("CUDA_VISIBLE_DEVICES") {
        // Set, it decides: the devices it lists by number, up to the first it does not (as
        // CUDA reads it: `-1` ends the list). Devices named by UUID are not numbered here.
        return visible_devices(&listed.to_string_lossy());
    }
    let count = std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count());
    (0..count as u32).collect()
}

/// The devices a `CUDA_VISIBLE_DEVICES` value lists by number.
fn visible_devices(listed: &str) -> Vec<u32> {
    listed
        .split(',')
        .map_while(|s| s.trim().parse::<u32>().ok())
        .collect()
}

/// The default spill parent, `shoal-spill-$UID` in the temporary directory: a directory of
/// this user alone (mode 0700, like [`user_runtime_dir`]).
pub fn default_spill_parent() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("shoal-spill-{uid}"))
}

fn default_store_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// 30% of physical memory, at most the free space of `dir`.
pub fn default_store_bytes(dir: &Path) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mem = if pages > 0 && page > 0 {
        pages as u64 * page as u64
    } else {
        4 << 30
    };
    let want = mem / 10 * 3;
    match free_bytes(dir) {
        Some(free) => want.min(free),
        None => want,
    }
}

/// Free bytes of the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the struct we pass; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_are_read_as_cuda_reads_them() {
        assert_eq!(visible_devices("0,1"), vec![0, 1]);
        assert_eq!(visible_devices(" 3, 5 "), vec![3, 5]);
        assert_eq!(visible_devices(""), Vec::<u32>::new());
        // CUDA stops at the first it cannot read: `-1` hides the rest.
        assert_eq!(visible_devices("2,-1,3"), vec![2]);
        assert_eq!(visible_devices("GPU-8f1c2e4a"), Vec::<u32>::new());
    }

    #[test]
    fn a_node_has_a_gpu_per_device_unless_told_otherwise() {
        let c = NodeConfig {
            gpu_devices: vec![0, 1, 2],
            ..NodeConfig::default()
        };
        assert_eq!(c.total_resources().get_milli(GPU), 3000);
        let told = NodeConfig {
            resources: vec![(GPU.to_string(), 1.0)],
            ..c
        };
        assert_eq!(told.total_resources().get_milli(GPU), 1000);
        let none = NodeConfig {
            gpu_devices: Vec::new(),
            ..NodeConfig::default()
        };
        assert_eq!(none.total_resources().get_milli(GPU), 0);
    }

    #[test]
    fn defaults_are_valid_and_sensible() {
        let c = NodeConfig::default();
        c.validate().unwrap();
        assert!(c.cpus >= 1.0);
        assert!(c.store_bytes > 0);
        assert_eq!(
            c.total_resources().get_milli("CPU"),
            (c.cpus * 1000.0) as u64
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = NodeConfig {
            cpus: -1.0,
            ..NodeConfig::default()
        };
        assert!(c.validate().is_err());
        c.cpus = 1.0;
        c.resources = vec![("CPU".into(), 1.0)];
        assert!(c.validate().is_err());
        c.resources = vec![("gpu".into(), 2.0)];
        c.validate().unwrap();
        assert_eq!(c.total_resources().get_milli("gpu"), 2000);
    }
}
