//! Sandboxed workers for code shipped by peers, and the memory monitor.
//!
//! A worker started from a binary a peer shipped runs:
//! - as the worker user ([`crate::config::SandboxConfig::worker_user`]; `nobody` by default
//!   when the node runs as root; root only if the operator allows it), with its
//!   supplementary groups dropped and `no_new_privs` set;
//! - in a working directory of its own (mode 0700, owned by the worker user, removed when it
//!   ends), with `HOME` and `TMPDIR` pointing there and a minimal environment;
//! - under a memory limit: a cgroup v2 (`memory.max`) where the node can make one with the
//!   memory controller, else a cgroup v1 (`memory.limit_in_bytes`), else `RLIMIT_DATA`. One
//!   cgroup per worker, under a parent cgroup that belongs to this node (`shoal-<pid>-<node>`
//!   beside the node's own cgroup); a worker's cgroup is removed when it ends, the parent when
//!   the node stops, and parents of nodes that died are removed when a node starts.
//!
//! Access to the node: the worker does not open the node's socket (it may not be allowed
//! to): it inherits one end of a socket pair, and the node serves the other end as a
//! connection that may only ever be that worker ([`crate::api::serve_inherited`]). The
//! executable is opened by the node and started through `/proc/self/fd`, so the worker user
//! needs no access to the directories of the node's code cache. The store's directory gets
//! POSIX ACL entries (access and default) for the worker user alone, so the worker can map
//! objects and write results there while the directory stays closed to everyone else: it
//! may search the directory (not list it) and read and write its files, which the store
//! makes 0660 under this ACL so that the mask lets the entry through
//! ([`crate::store::StoreFiles::follow_acl`]).
//!
//! The worker's cgroup is entered, and the user switched, between `fork` and `exec` (a
//! `pre_exec` hook that only makes system calls): no instruction of the shipped binary runs
//! outside its limit or as the node's user.
//!
//! The memory monitor ([`MemoryMonitor`]) samples `/proc/meminfo`; when the share of memory
//! in use passes the threshold, the node kills the worker with the largest resident set (as
//! Ray's memory monitor does), and its task fails with `OutOfMemory` (or is retried).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_protocol::NodeId;

use crate::config::SandboxConfig;
use crate::core::sched::WorkerId;

/// The user `nobody`: the default worker user of a node that runs as root.
pub const DEFAULT_WORKER_USER: &str = "nobody";
/// How often the memory monitor samples the machine's memory.
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
/// How long removing a worker's cgroup may wait for its last processes to go.
const CGROUP_REMOVE_WAIT: Duration = Duration::from_secs(2);

/// Why the sandbox could not be set up, or a sandboxed worker started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The worker user does not exist.
    #[error("worker user {0:?} does not exist")]
    NoSuchUser(String),
    /// The node runs as root and would run shipped code as root.
    #[error("refusing to run code shipped by peers as root; pick an unprivileged --worker-user, or pass --allow-root-workers")]
    RootWorkers,
    /// Switching to the worker user needs root.
    #[error("running workers as {user:?} needs root (the node runs as uid {uid})")]
    NotRoot {
        /// The user asked for.
        user: String,
        /// The node's uid.
        uid: u32,
    },
    /// A file or directory of the sandbox could not be made or changed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The user sandboxed workers run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// Looks `name` up in the user database.
pub fn lookup_user(name: &str) -> Result<WorkerUser, SandboxError> {
    let c = CString::new(name).map_err(|_| SandboxError::NoSuchUser(name.to_string()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pwd` and `buf` (of the length given) only; `result`
    // then points at `pwd` or is null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return Err(SandboxError::NoSuchUser(name.to_string()));
        }
        Ok(WorkerUser {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// How a worker's memory is limited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limiter {
    /// No limit was asked for.
    None,
    /// A cgroup v2 per worker under this node-owned parent.
    V2(PathBuf),
    /// A cgroup v1 (memory controller) per worker under this node-owned parent.
    V1(PathBuf),
    /// `RLIMIT_DATA`: no cgroup could be made. A worker that hits it sees its allocations
    /// fail (and usually aborts); the node cannot tell that from another crash.
    Rlimit,
}

/// The sandbox of one node: the worker user, the memory limit and where workers' cgroups
/// and working directories go.
#[derive(Debug)]
pub struct Sandbox {
    /// The user to switch to; `None` when workers run as the node's own user.
    user: Option<WorkerUser>,
    memory: Option<u64>,
    limiter: Limiter,
    /// Where the node moved itself to make cgroups for its workers (v2 only).
    node_leaf: Option<NodeLeaf>,
    /// The parent of the workers' working directories.
    dirs: PathBuf,
    /// Set once [`Sandbox::destroy`] ran.
    destroyed: bool,
}

impl Sandbox {
    /// Sets the sandbox of node `node` up: resolves the worker user (refusing root unless
    /// allowed), finds how memory can be limited and makes the node's parent cgroup and the
    /// parent of the working directories.
    pub fn new(config: &SandboxConfig, node: NodeId) -> Result<Self, SandboxError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let user = match (&config.worker_user, euid) {
            (None, 0) => Some(lookup_user(DEFAULT_WORKER_USER)?),
            (None, _) => None,
            (Some(name), 0) => Some(lookup_user(name)?),
            (Some(name), uid) => {
                let u = lookup_user(name)?;
                if u.uid != uid {
                    return Err(SandboxError::NotRoot {
                        user: name.clone(),
                        uid,
                    });
                }
                None
            }
        };
        let runs_as = user.as_ref().map_or(euid, |u| u.uid);
        if runs_as == 0 && !config.allow_root_workers {
            return Err(SandboxError::RootWorkers);
        }
        let tag = format!("shoal-{}-{node}", std::process::id());
        remove_stale_workdirs(&std::env::temp_dir());
        let dirs = std::env::temp_dir().join(format!("{tag}-workers"));
        // A fresh name (the node id is random): an existing one is someone else's.
        std::fs::create_dir(&dirs).map_err(io_err("cannot make", &dirs))?;
        if let Err(e) = set_mode(&dirs, 0o711) {
            remove_workdir(&dirs);
            return Err(io_err("cannot set the mode of", &dirs)(e));
        }
        // Last: nothing fails after the cgroups are made.
        let (limiter, node_leaf) = match config.worker_memory {
            None => (Limiter::None, None),
            Some(_) if !config.cgroups => (Limiter::Rlimit, None),
            Some(_) => detect_limiter(&tag),
        };
        tracing::info!(
            user = user.as_ref().map(|u| u.name.as_str()).unwrap_or("(the node's own)"),
            memory = config.worker_memory,
            limiter = ?limiter,
            "workers of shipped code are sandboxed"
        );
        Ok(Self {
            user,
            memory: config.worker_memory,
            limiter,
            node_leaf,
            dirs,
            destroyed: false,
        })
    }

    /// The user sandboxed workers run as, if not the node's own.
    pub fn user(&self) -> Option<&WorkerUser> {
        self.user.as_ref()
    }

    /// How memory is limited.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Lets the worker user read and write the store's files: ACL entries for it on the
    /// store directory and its subdirectories, inherited by the files made there. Without
    /// ACL support, sandboxed workers cannot use large objects (logged).
    pub fn grant_store(&self, store_dir: &Path) {
        let Some(user) = &self.user else {
            return;
        };
        let mut dirs = vec![store_dir.to_path_buf()];
        if let Ok(entries) = std::fs::read_dir(store_dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        for dir in dirs {
            if let Err(e) = grant_dir(&dir, user.uid) {
                tracing::warn!(dir = %dir.display(), user = %user.name, error = %e,
                    "cannot give the worker user access to the store; sandboxed workers cannot use large objects");
            }
        }
    }

    /// Makes what worker `worker` needs before it starts: its working directory and its
    /// cgroup.
    pub fn prepare(&self, worker: WorkerId) -> Result<Prepared, SandboxError> {
        let workdir = self.dirs.join(format!("w-{worker}"));
        std::fs::create_dir(&workdir).map_err(io_err("cannot make", &workdir))?;
        let prepared = (|| {
            set_mode(&workdir, 0o700).map_err(io_err("cannot set the mode of", &workdir))?;
            if let Some(u) = &self.user {
                chown(&workdir, u.uid, u.gid).map_err(io_err("cannot chown", &workdir))?;
            }
            let cgroup = match (&self.limiter, self.memory) {
                (Limiter::V2(parent), Some(limit)) => {
                    Some(Cgroup::make(CgroupKind::V2, parent, worker, limit)?)
                }
                (Limiter::V1(parent), Some(limit)) => {
                    Some(Cgroup::make(CgroupKind::V1, parent, worker, limit)?)
                }
                _ => None,
            };
            let rlimit = match self.limiter {
                Limiter::Rlimit => self.memory,
                _ => None,
            };
            Ok((cgroup, rlimit))
        })();
        match prepared {
            Ok((cgroup, rlimit)) => Ok(Prepared {
                workdir,
                cgroup,
                rlimit,
                user: self.user.clone(),
            }),
            Err(e) => {
                remove_workdir(&workdir);
                Err(e)
            }
        }
    }

    /// Removes whatever is left: every worker's cgroup (killing processes still in it),
    /// the node's parent cgroup and the working directories. For the node's stop (a
    /// sandbox dropped without it does it on drop).
    pub fn destroy(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if std::mem::replace(&mut self.destroyed, true) {
            return;
        }
        match &self.limiter {
            Limiter::V2(parent) | Limiter::V1(parent) => remove_cgroup_tree(parent),
            Limiter::None | Limiter::Rlimit => {}
        }
        if let Some(leaf) = &self.node_leaf {
            leaf.undo();
        }
        remove_workdir(&self.dirs);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// What one sandboxed worker gets; see [`Sandbox::prepare`].
#[derive(Debug)]
pub struct Prepared {
    /// Its working directory.
    pub workdir: PathBuf,
    /// Its cgroup, if memory is limited by one.
    pub cgroup: Option<Cgroup>,
    /// Its `RLIMIT_DATA`, if memory is limited that way.
    pub rlimit: Option<u64>,
    /// The user it runs as, if not the node's own.
    pub user: Option<WorkerUser>,
}

impl Prepared {
    /// What the child does between `fork` and `exec`, for a `pre_exec` hook: enter the
    /// cgroup (through `procs`, `cgroup.procs` opened beforehand), keep `keep_fd` open across
    /// `exec`, set the rlimit, drop to the worker user, set `no_new_privs`. Only system calls:
    /// nothing here allocates or takes a lock.
    pub fn child_setup(
        &self,
        procs: Option<&OwnedFd>,
        keep_fd: i32,
    ) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let procs = procs.map(|f| f.as_raw_fd());
        let rlimit = self.rlimit;
        let ids = self.user.as_ref().map(|u| (u.uid, u.gid));
        move || {
            // SAFETY: each call below is a plain system call on values owned by this child
            // (a descriptor inherited from the parent, integers); async-signal-safe.
            unsafe {
                if let Some(fd) = procs {
                    // "0" is the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::fcntl(keep_fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(bytes) = rlimit {
                    let lim = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = ids {
                    let groups = [gid as libc::gid_t];
                    if libc::setgroups(1, groups.as_ptr()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    // Root could otherwise come back.
                    if libc::setuid(0) == 0 && uid != 0 {
                        return Err(io::Error::from_raw_os_error(libc::EPERM));
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }
}

/// Which cgroup interface a [`Cgroup`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupKind {
    /// The unified hierarchy.
    V2,
    /// The v1 memory controller's hierarchy.
    V1,
}

/// One worker's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    kind: CgroupKind,
    dir: PathBuf,
    limit: u64,
}

impl Cgroup {
    fn make(
        kind: CgroupKind,
        parent: &Path,
        worker: WorkerId,
        limit: u64,
    ) -> Result<Self, SandboxError> {
        let dir = parent.join(format!("w-{worker}"));
        std::fs::create_dir(&dir).map_err(io_err("cannot make the cgroup", &dir))?;
        let cg = Self { kind, dir, limit };
        let (file, extra) = match kind {
            CgroupKind::V2 => ("memory.max", Some("memory.swap.max")),
            // memsw (memory + swap) must be set after the memory limit, and may not exist.
            CgroupKind::V1 => ("memory.limit_in_bytes", Some("memory.memsw.limit_in_bytes")),
        };
        let set = std::fs::write(cg.dir.join(file), limit.to_string());
        if let Err(e) = set {
            cg.remove();
            return Err(SandboxError::Io {
                what: "cannot set the memory limit of",
                path: parent.join(format!("w-{worker}")),
                source: e,
            });
        }
        if let Some(extra) = extra {
            // Without swap accounting the file is absent: the memory limit alone holds.
            let value = match kind {
                CgroupKind::V2 => "0".to_string(),
                CgroupKind::V1 => limit.to_string(),
            };
            if let Err(e) = std::fs::write(cg.dir.join(extra), value) {
                tracing::debug!(file = extra, error = %e, "no swap limit for the worker's cgroup");
            }
        }
        Ok(cg)
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its memory limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// `cgroup.procs`, opened for the child to write itself into (see
    /// [`Prepared::child_setup`]).
    pub fn open_procs(&self) -> io::Result<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// Whether the kernel's OOM killer killed a process of it, and the most it used.
    pub fn oom(&self) -> Option<u64> {
        let (file, key) = match self.kind {
            CgroupKind::V2 => ("memory.events", "oom_kill"),
            CgroupKind::V1 => ("memory.oom_control", "oom_kill"),
        };
        let text = std::fs::read_to_string(self.dir.join(file)).ok()?;
        let kills: u64 = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())?;
        if kills == 0 {
            return None;
        }
        let peak = match self.kind {
            CgroupKind::V2 => "memory.peak",
            CgroupKind::V1 => "memory.max_usage_in_bytes",
        };
        Some(read_u64(&self.dir.join(peak)).unwrap_or(self.limit))
    }

    /// Kills what is left in it and removes it (waiting a little for the processes to go).
    pub fn remove(&self) {
        remove_cgroup(&self.dir);
    }
}

/// Finds how worker memory can be limited here: a cgroup v2 with the memory controller,
/// else a v1 memory hierarchy, else `RLIMIT_DATA`; makes the node's parent cgroup `tag`.
fn detect_limiter(tag: &str) -> (Limiter, Option<NodeLeaf>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Some(own_dir) = v2_dir(&mountinfo, &own) {
        match make_v2_parent(&own_dir, tag) {
            Ok((parent, leaf)) => return (Limiter::V2(parent), leaf),
            Err(e) => {
                tracing::info!(cgroup = %own_dir.display(), error = %e, "no cgroup v2 memory limit here")
            }
        }
    }
    if let Some(own_dir) = v1_dir(&mountinfo, &own) {
        remove_stale_parents(&own_dir);
        let parent = own_dir.join(tag);
        match std::fs::create_dir(&parent) {
            Ok(()) => return (Limiter::V1(parent), None),
            Err(e) => {
                tracing::info!(cgroup = %parent.display(), error = %e, "no cgroup v1 memory limit here")
            }
        }
    }
    tracing::warn!("no cgroup can be made for workers: their memory is limited by RLIMIT_DATA");
    (Limiter::Rlimit, None)
}

/// Where the node moved itself so that its own cgroup could give its children the memory
/// controller (cgroup v2 has no processes in inner nodes): undone when the node stops.
#[derive(Debug)]
struct NodeLeaf {
    /// The node's cgroup.
    own: PathBuf,
    /// The leaf it moved into.
    leaf: PathBuf,
    /// Whether the node enabled the memory controller for the children of `own`.
    enabled: bool,
}

impl NodeLeaf {
    /// Disables what the node enabled, moves it back and removes the leaf (best effort:
    /// a leaf left here is removed by the next node's start, once this process is gone).
    fn undo(&self) {
        if self.enabled {
            if let Err(e) = std::fs::write(self.own.join("cgroup.subtree_control"), "-memory") {
                tracing::debug!(cgroup = %self.own.display(), error = %e, "memory controller left enabled");
            }
        }
        if let Err(e) = std::fs::write(
            self.own.join("cgroup.procs"),
            std::process::id().to_string(),
        ) {
            tracing::debug!(cgroup = %self.own.display(), error = %e, "cannot move the node back to its cgroup");
            return;
        }
        remove_cgroup(&self.leaf);
    }
}

/// Gives the node's v2 cgroup's children the memory controller and makes the node's parent
/// cgroup `tag` with it. When the node's cgroup holds processes (itself, at least), the node
/// first moves into a leaf cgroup of its own (`<tag>-node`); if others stay there, it moves
/// back and gives up.
fn make_v2_parent(own_dir: &Path, tag: &str) -> io::Result<(PathBuf, Option<NodeLeaf>)> {
    let controllers = std::fs::read_to_string(own_dir.join("cgroup.controllers"))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(io::Error::other("the memory controller is not available"));
    }
    let control = own_dir.join("cgroup.subtree_control");
    let had = std::fs::read_to_string(&control)?
        .split_whitespace()
        .any(|c| c == "memory");
    let mut leaf = None;
    if !had {
        if let Err(e) = std::fs::write(&control, "+memory") {
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e);
            }
            let moved = NodeLeaf {
                own: own_dir.to_path_buf(),
                leaf: own_dir.join(format!("{tag}-node")),
                enabled: true,
            };
            std::fs::create_dir(&moved.leaf)?;
            let pid = std::process::id().to_string();
            let result = std::fs::write(moved.leaf.join("cgroup.procs"), pid)
                .and_then(|()| std::fs::write(&control, "+memory"));
            if let Err(e) = result {
                // Other processes share the node's cgroup: it stays as it was.
                moved.undo();
                return Err(e);
            }
            tracing::info!(cgroup = %moved.leaf.display(), "the node moved into a cgroup of its own to limit its workers' memory");
            leaf = Some(moved);
        }
    }
    remove_stale_parents(own_dir);
    let parent = own_dir.join(tag);
    let made = std::fs::create_dir(&parent)
        .and_then(|()| std::fs::write(parent.join("cgroup.subtree_control"), "+memory"));
    if let Err(e) = made {
        remove_cgroup(&parent);
        if let Some(l) = &leaf {
            l.undo();
        }
        return Err(e);
    }
    Ok((parent, leaf))
}

/// Mount point and root of the first mount in `mountinfo` whose type is `fstype` and whose
/// super options satisfy `opts`.
fn find_mount(
    mountinfo: &str,
    fstype: &str,
    opts: impl Fn(&str) -> bool,
) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split_whitespace();
        let (ty, _source, super_opts) = (post.next()?, post.next()?, post.next().unwrap_or(""));
        if ty != fstype || !opts(super_opts) {
            return None;
        }
        let pre: Vec<&str> = pre.split_whitespace().collect();
        Some((PathBuf::from(pre.get(4)?), pre.get(3)?.to_string()))
    })
}

/// `mount` + `path` (which is relative to the cgroup namespace), without the mount's root.
fn cgroup_dir(mount: &Path, root: &str, path: &str) -> PathBuf {
    let rel = if root != "/" {
        path.strip_prefix(root).unwrap_or(path)
    } else {
        path
    };
    mount.join(rel.trim_start_matches('/'))
}

fn v2_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    let (mount, root) = find_mount(mountinfo, "cgroup2", |_| true)?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup_dir(&mount, &root, path))
}

fn v1_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    let (mount, root) = find_mount(mountinfo, "cgroup", |o| o.split(',').any(|x| x == "memory"))?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    Some(cgroup_dir(&mount, &root, path))
}

/// Removes the parent cgroups (`shoal-<pid>-…`) of nodes whose process is gone.
fn remove_stale_parents(own_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(own_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shoal-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && !crate::store::process_alive(pid) {
            tracing::info!(cgroup = %entry.path().display(), pid, "removing the cgroups of a dead node");
            remove_cgroup_tree(&entry.path());
        }
    }
}

/// Removes the working directories (`shoal-<pid>-<node>-workers`) of nodes whose process is
/// gone: a node killed with SIGKILL leaves them.
fn remove_stale_workdirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.ends_with("-workers"))
            .and_then(|n| n.strip_prefix("shoal-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Only this user's (and no symbolic link): another user's directory is none of this
        // node's business.
        let mine = crate::runtime::access::owned_dir(&entry.path());
        if mine && pid > 0 && !crate::store::process_alive(pid) {
            tracing::info!(dir = %entry.path().display(), pid, "removing the worker directories of a dead node");
            remove_workdir(&entry.path());
        }
    }
}

/// Removes `dir` and every cgroup below it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    remove_cgroup(dir);
}

/// Kills the processes of cgroup `dir` and removes it, waiting at most
/// [`CGROUP_REMOVE_WAIT`] for them to go. Logs a failure.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + CGROUP_REMOVE_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a worker cgroup");
                return;
            }
            Err(_) => {
                kill_cgroup(dir);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// SIGKILLs every process of cgroup `dir`.
fn kill_cgroup(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        if let Err(e) = std::fs::write(&kill_file, "1") {
            tracing::debug!(cgroup = %dir.display(), error = %e, "cgroup.kill failed");
        }
        return;
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is in the worker's cgroup,
        // which only the worker and its children enter.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            tracing::debug!(pid, error = %io::Error::last_os_error(), "cannot kill a process left in a worker's cgroup");
        }
    }
}

/// Removes a working directory (logged if it fails).
pub fn remove_workdir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a worker's directory");
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: the path is NUL-terminated; chown reads it only.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The xattr form of a POSIX ACL: the owner gets everything, `uid` gets `user`, the owning
/// group `group`, others nothing; the mask is `mask`. See acl(5): a version, then (tag,
/// permissions, id) entries.
fn acl_for(uid: u32, user: u16, group: u16, mask: u16) -> Vec<u8> {
    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED: u32 = u32::MAX;
    let entries = [
        (USER_OBJ, 7u16, UNDEFINED),
        (USER, user, uid),
        (GROUP_OBJ, group, UNDEFINED),
        (MASK, mask, UNDEFINED),
        (OTHER, 0, UNDEFINED),
    ];
    let mut out = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The access and default ACLs that give `uid` what a worker needs in a store directory
/// whose mode is `mode`. On the directory itself: search only (`--x`), so it opens the files
/// it is told the names of but can neither list nor remove any, as the socket group's
/// members (mode 2710). On the files made there (the default ACL): `rw-`, effective because
/// the store makes them 0660 when it sees this ACL (a file's group bits become its mask;
/// see [`crate::store::StoreFiles::follow_acl`]). The owning group keeps what the mode gave
/// it: nothing, or with a socket group search on the directory and `rw-` on the files.
fn store_acls(uid: u32, mode: u32) -> (Vec<u8>, Vec<u8>) {
    let shared = mode & 0o070 != 0;
    let dir_group = ((mode >> 3) & 7) as u16;
    let file_group = if shared { 6 } else { 0 };
    (
        acl_for(uid, 1, dir_group, 1 | dir_group),
        acl_for(uid, 6, file_group, 7),
    )
}

/// Gives `uid` (and the owner) access to `dir` and to the files made in it ([`store_acls`]).
pub(crate) fn grant_dir(dir: &Path, uid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::symlink_metadata(dir)?.mode();
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let (access, default) = store_acls(uid, mode);
    for (name, acl) in [
        (c"system.posix_acl_access", access),
        (c"system.posix_acl_default", default),
    ] {
        // SAFETY: both strings are NUL-terminated; the value is `acl.len()` bytes we own.
        let rc =
            unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), acl.as_ptr().cast(), acl.len(), 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The machine's memory: total and available bytes, from `/proc/meminfo`.
pub fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The resident set of process `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Watches the machine's memory; see the [module documentation](self).
#[derive(Debug)]
pub struct MemoryMonitor {
    threshold: f64,
}

/// A worker the monitor picked to kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Victim {
    /// The worker.
    pub worker: WorkerId,
    /// The threshold, in bytes of memory in use.
    pub limit: u64,
    /// Its resident set.
    pub used: u64,
}

impl MemoryMonitor {
    /// A monitor that acts above `threshold` (a share of memory in use); `None` if the
    /// threshold is 1 (off).
    pub fn new(threshold: f64) -> Option<Self> {
        (threshold < 1.0).then_some(Self { threshold })
    }

    /// Samples memory; above the threshold, the worker among `workers` (id, pid) with the
    /// largest resident set.
    pub fn check(&self, workers: impl Iterator<Item = (WorkerId, u32)>) -> Option<Victim> {
        let (total, available) = meminfo()?;
        self.pick(
            total,
            available,
            workers.filter_map(|(w, pid)| Some((w, rss(pid)?))),
        )
    }

    /// The decision of [`MemoryMonitor::check`], from numbers: (worker, resident bytes).
    pub fn pick(
        &self,
        total: u64,
        available: u64,
        workers: impl Iterator<Item = (WorkerId, u64)>,
    ) -> Option<Victim> {
        let used = total.saturating_sub(available);
        let limit = (total as f64 * self.threshold) as u64;
        if used < limit {
            return None;
        }
        let (worker, rss) = workers.max_by_key(|(_, rss)| *rss)?;
        tracing::warn!(
            used,
            total,
            limit,
            worker,
            rss,
            "memory is nearly full: killing the worker using the most"
        );
        Some(Victim {
            worker,
            limit,
            used: rss,
        })
    }
}

/// Opens `exe` for starting it through `/proc/self/fd` (see [`proc_fd_path`]).
pub fn open_exe(exe: &Path) -> io::Result<File> {
    File::open(exe)
}

/// The path that names open descriptor `fd` of the process that uses it.
pub fn proc_fd_path(fd: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_own_cgroups_are_found() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";
        let own = "4:memory:/a/b\n1:cpu:/\n0::/svc\n";
        assert_eq!(
            v2_dir(mountinfo, own),
            Some(PathBuf::from("/sys/fs/cgroup/unified/svc"))
        );
        assert_eq!(
            v1_dir(mountinfo, own),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
        // A mount of a sub-tree (a container's view): its root is cut from the path.
        let nested = "40 25 0:27 /a /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            v1_dir(nested, own),
            Some(PathBuf::from("/sys/fs/cgroup/memory/b"))
        );
        assert_eq!(v1_dir("", own), None);
    }

    #[test]
    fn the_monitor_kills_the_largest_worker_only_above_its_threshold() {
        let m = MemoryMonitor::new(0.9).unwrap();
        let workers = || [(1, 100u64), (2, 700), (3, 50)].into_iter();
        assert_eq!(m.pick(1000, 200, workers()), None);
        assert_eq!(
            m.pick(1000, 50, workers()),
            Some(Victim {
                worker: 2,
                limit: 900,
                used: 700
            })
        );
        assert_eq!(m.pick(1000, 50, std::iter::empty()), None);
        assert!(MemoryMonitor::new(1.0).is_none());
    }

    #[test]
    fn acls_name_the_worker_user() {
        // Entry i starts at 4 + 8 * i: tag, permissions, id.
        let perm = |acl: &[u8], i: usize| u16::from_le_bytes([acl[6 + 8 * i], acl[7 + 8 * i]]);
        let (access, default) = store_acls(65534, 0o40700);
        for acl in [&access, &default] {
            assert_eq!(acl.len(), 4 + 5 * 8);
            assert_eq!(&acl[12..14], &[0x02, 0]);
            assert_eq!(&acl[16..20], &65534u32.to_le_bytes());
            // Others nothing.
            assert_eq!(perm(acl, 4), 0);
        }
        // The directory: the worker user may search it only, the group nothing.
        assert_eq!(
            (perm(&access, 1), perm(&access, 2), perm(&access, 3)),
            (1, 0, 1)
        );
        // Its files: the worker user reads and writes them, the group gets nothing.
        assert_eq!((perm(&default, 1), perm(&default, 2)), (6, 0));
        // Shared with the socket group (2710): the group keeps its search and its files.
        let (access, default) = store_acls(65534, 0o42710);
        assert_eq!(
            (perm(&access, 1), perm(&access, 2), perm(&access, 3)),
            (1, 1, 1)
        );
        assert_eq!((perm(&default, 1), perm(&default, 2)), (6, 6));
    }

    #[test]
    fn a_child_gets_its_rlimit_no_new_privs_and_user_before_exec() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = root.then(|| lookup_user(DEFAULT_WORKER_USER).unwrap());
        let prepared = Prepared {
            workdir: PathBuf::from("/"),
            cgroup: None,
            rlimit: Some(64 << 20),
            user: user.clone(),
        };
        let kept = File::open("/dev/null").unwrap();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "ulimit -d; grep NoNewPrivs /proc/self/status; id -u; ls -l /proc/self/fd/$0",
        ])
        .arg(kept.as_raw_fd().to_string());
        // SAFETY: the hook makes system calls only.
        unsafe {
            cmd.pre_exec(prepared.child_setup(None, kept.as_raw_fd()));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "65536", "{text}");
        assert!(
            lines[1].ends_with("\t1") || lines[1].ends_with(" 1"),
            "{text}"
        );
        // SAFETY: getuid has no preconditions.
        let uid = user.map_or(unsafe { libc::getuid() }, |u| u.uid);
        assert_eq!(lines[2], uid.to_string(), "{text}");
        // The descriptor it was to keep survived the exec.
        assert!(lines[3].contains("/dev/null"), "{text}");
    }

    #[test]
    fn a_worker_gets_its_own_directory_and_cgroup_and_nothing_outlives_the_sandbox() {
        let config = SandboxConfig {
            worker_memory: Some(32 << 20),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::new(&config, NodeId([7; 16])).unwrap();
        let dirs = sandbox.dirs.clone();
        let prepared = sandbox.prepare(3).unwrap();
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let meta = std::fs::metadata(&prepared.workdir).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
            // SAFETY: geteuid has no preconditions.
            let owner = sandbox.user().map_or(unsafe { libc::geteuid() }, |u| u.uid);
            assert_eq!(meta.uid(), owner);
        }
        let cgroup_dir = prepared.cgroup.as_ref().map(|c| c.dir().to_path_buf());
        match sandbox.limiter() {
            Limiter::V1(_) => {
                let dir = cgroup_dir.clone().expect("a cgroup per worker");
                let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
                assert_eq!(limit.trim(), (32u64 << 20).to_string());
            }
            Limiter::V2(_) => {
                let dir = cgroup_dir.clone().expect("a cgroup per worker");
                let limit = std::fs::read_to_string(dir.join("memory.max")).unwrap();
                assert_eq!(limit.trim(), (32u64 << 20).to_string());
            }
            Limiter::Rlimit => assert_eq!(prepared.rlimit, Some(32 << 20)),
            Limiter::None => panic!("a limit was asked for"),
        }
        drop(sandbox);
        assert!(!dirs.exists(), "{} left behind", dirs.display());
        if let Some(dir) = cgroup_dir {
            assert!(!dir.exists(), "{} left behind", dir.display());
            assert!(!dir.parent().unwrap().exists());
        }
    }

    #[test]
    fn root_workers_are_refused_unless_allowed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let config = SandboxConfig {
            worker_user: Some("root".into()),
            ..SandboxConfig::default()
        };
        assert!(matches!(
            Sandbox::new(&config, NodeId([1; 16])),
            Err(SandboxError::RootWorkers)
        ));
        assert!(matches!(
            lookup_user("no-such-user-here"),
            Err(SandboxError::NoSuchUser(_))
        ));
    }
}
