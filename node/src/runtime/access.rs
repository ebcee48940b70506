//! Who may use the node on this machine, and the directories only its user may touch.
//!
//! - [`Access`]: the rule the local socket applies to each connection's kernel credentials
//!   (`SO_PEERCRED`), before a byte is read: the node's own uid, root and the members of the
//!   `--socket-group` attach; a child process of the node (a worker it started, whatever
//!   uid it runs as) may attach as a worker only; anyone else is refused.
//! - [`private_dir`]: a directory of this user alone (the runtime directory, the store and
//!   spill directories), made mode 0700, and refused when it exists with another owner or
//!   with write access for others (someone may have planted a file in it).
//! - [`safe_parent`]: a directory the node makes its own directories in (`/dev/shm`, a
//!   configured parent): owned by this user or root, and nobody else may replace entries in
//!   it (no write access for others, or the sticky bit as `/tmp` has).
//! - [`check_socket_dir`]: the client's side: the directory of a node's socket must be owned
//!   by this user or root and writable by nobody else, or a planted socket could receive the
//!   program's binary path and arguments.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The kernel's credentials of a connected process (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Its pid (0 when the kernel did not tell).
    pub pid: u32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
}

impl PeerCred {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self {
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            uid: cred.uid(),
            gid: cred.gid(),
        })
    }
}

/// What a connection may do, by its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A process of the node's user, root, or the socket group: any role.
    Client,
    /// A child process of the node under another uid (a worker it started): only as a
    /// worker.
    WorkerOnly,
    /// Anyone else: closed before anything is read.
    Refused,
}

/// The node's access rule for its local socket.
#[derive(Clone, Debug)]
pub struct Access {
    /// The node's effective uid.
    uid: u32,
    /// The node's pid (its workers are its children).
    pid: u32,
    /// The `--socket-group`, if any.
    group: Option<u32>,
}

impl Access {
    /// The rule for this process, with `group` (a gid) also allowed.
    pub fn new(group: Option<u32>) -> Self {
        Self {
            uid: current_uid(),
            pid: std::process::id(),
            group,
        }
    }

    /// The socket group, if any.
    pub fn group(&self) -> Option<u32> {
        self.group
    }

    /// Decides on a connection from `cred`.
    pub fn verdict(&self, cred: &PeerCred) -> Verdict {
        if cred.uid == self.uid || cred.uid == 0 {
            return Verdict::Client;
        }
        if let Some(g) = self.group {
            if cred.gid == g || supplementary_groups(cred.pid).contains(&g) {
                return Verdict::Client;
            }
        }
        if self.is_child(cred.pid) {
            return Verdict::WorkerOnly;
        }
        Verdict::Refused
    }

    /// Whether `pid` is a child process of the node (a worker it started).
    pub fn is_child(&self, pid: u32) -> bool {
        pid != 0 && parent_of(pid) == Some(self.pid)
    }
}

/// This process's effective uid.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: fields count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The supplementary groups of `pid`, from `/proc/<pid>/status` (none if it is gone).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Why a group or a directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No group has this name.
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
    /// The directory belongs to someone else.
    #[error(
        "{path} is owned by uid {owner}, not by this user (uid {uid}){hint}: refusing to use it \
         (someone else may have made it to plant files in it); remove it"
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's uid.
        uid: u32,
        /// " or root" where root is accepted too.
        hint: &'static str,
    },
    /// Others may write to the directory.
    #[error(
        "{path} has mode {mode:04o}: users other than its owner may write to it; refusing to \
         use it (run `chmod go-w {path}` or remove it)"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The path is not a directory (a symbolic link is not accepted either).
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl From<AccessError> for io::Error {
    fn from(e: AccessError) -> Self {
        let kind = match &e {
            AccessError::Io { source, .. } => source.kind(),
            AccessError::NoSuchGroup(_) => io::ErrorKind::NotFound,
            _ => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AccessError + '_ {
    move |source| AccessError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The gid of group `name` (a number is taken as a gid).
pub fn resolve_group(name: &str) -> Result<u32, AccessError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name).map_err(|_| AccessError::NoSuchGroup(name.into()))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: getgrnam_r writes into `grp` and `buf` (of the length we pass) only, and
        // sets `found` to `&grp` or null.
        let (r, gid) = unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut found: *mut libc::group = std::ptr::null_mut();
            let r = libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            );
            (r, (!found.is_null()).then_some(grp.gr_gid))
        };
        match (r, gid) {
            (0, Some(gid)) => return Ok(gid),
            (libc::ERANGE, _) if buf.len() < (1 << 24) => buf.resize(buf.len() * 4, 0),
            _ => return Err(AccessError::NoSuchGroup(name.into())),
        }
    }
}

/// The mode of a private directory: 0700, or with a socket group 0710 (its members may reach
/// a file they know the name of, never list) and group-owned.
fn private_mode(group: Option<u32>) -> u32 {
    match group {
        Some(_) => 0o710,
        None => 0o700,
    }
}

/// Makes `dir` a directory of this user alone: created with mode 0700 (0710 and owned by
/// `group` when given, plus the set-group-id bit when `inherit` so its files get the group
/// too). An existing one must be a real directory owned by this user that nobody else may
/// write to; looser read or search bits are taken away (nothing could have been planted).
/// Its parent is made if missing (mode 0700).
pub fn private_dir(dir: &Path, group: Option<u32>, inherit: bool) -> Result<(), AccessError> {
    let uid = current_uid();
    let mut want = private_mode(group);
    if inherit && group.is_some() {
        want |= libc::S_ISGID;
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err(parent))?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.file_type().is_dir() {
        return Err(AccessError::NotADirectory(dir.to_path_buf()));
    }
    if meta.uid() != uid {
        return Err(AccessError::NotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            uid,
            hint: "",
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(AccessError::Writable {
            path: dir.to_path_buf(),
            mode,
        });
    }
    if let Some(g) = group {
        if meta.gid() != g {
            chown_group(dir, g)?;
        }
    }
    if mode != want {
        if mode & 0o077 & !want != 0 {
            tracing::info!(dir = %dir.display(), mode = format!("{mode:04o}"), want = format!("{want:04o}"), "tightening the mode of a private directory");
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Gives `path` to group `gid` (the owner stays).
pub fn chown_group(path: &Path, gid: u32) -> Result<(), AccessError> {
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err(path))
}

/// Checks (or makes, mode 0700) a directory the node makes its own directories in: it must be
/// owned by this user or root, and nobody else may replace entries in it (no write access for
/// group or others, unless it is sticky, as `/tmp` and `/dev/shm` are).
pub fn safe_parent(dir: &Path) -> Result<(), AccessError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    check_not_planted(dir)
}

/// The client's check of the directory of a node's socket: owned by this user or root, and
/// nobody else may replace entries in it (no write access for group or others unless
/// sticky). A directory that does not exist passes (there is no node to connect to).
pub fn check_socket_dir(dir: &Path) -> Result<(), AccessError> {
    if !dir.exists() {
        return Ok(());
    }
    check_not_planted(dir)
}

fn check_not_planted(dir: &Path) -> Result<(), AccessError> {
    let uid = current_uid();
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(AccessError::NotADirectory(dir.to_path_buf()));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(AccessError::NotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            uid,
            hint: " or root",
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(AccessError::Writable {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Whether `path` is a directory (not a symbolic link) owned by this user: the only kind
/// start-up may remove.
pub fn owned_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_dir() && m.uid() == current_uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-access-{name}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn private_dirs_are_made_0700_and_checked() {
        let base = scratch("private");
        let dir = base.join("a/b");
        private_dir(&dir, None, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.join("a")), 0o700);
        // Readable by others: tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir, None, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // Writable by others: refused, left as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&dir, None, false).unwrap_err();
        assert!(
            matches!(e, AccessError::Writable { mode: 0o777, .. }),
            "{e}"
        );
        assert_eq!(mode(&dir), 0o777);
        // A symbolic link to a directory is not one.
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            private_dir(&link, None, false),
            Err(AccessError::NotADirectory(_))
        ));
        // A file neither.
        std::fs::write(base.join("file"), b"x").unwrap();
        assert!(private_dir(&base.join("file"), None, false).is_err());
        // With a group: 0710 (and set-group-id when files should inherit it), group-owned.
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        let shared = base.join("shared");
        private_dir(&shared, Some(gid), true).unwrap();
        assert_eq!(mode(&shared), 0o2710);
        assert_eq!(std::fs::metadata(&shared).unwrap().gid(), gid);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn dirs_of_other_users_are_refused() {
        if current_uid() != 0 {
            eprintln!("skipped: needs root to give a directory away");
            return;
        }
        let base = scratch("owner");
        let theirs = base.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = private_dir(&theirs, None, false).unwrap_err();
        assert!(
            matches!(e, AccessError::NotOwned { owner: 65534, .. }),
            "{e}"
        );
        assert!(matches!(
            safe_parent(&theirs),
            Err(AccessError::NotOwned { .. })
        ));
        assert!(matches!(
            check_socket_dir(&theirs),
            Err(AccessError::NotOwned { .. })
        ));
        assert!(!owned_dir(&theirs));
        assert!(owned_dir(&base));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn parents_may_be_sticky_but_not_open() {
        let base = scratch("parent");
        safe_parent(&base.join("new")).unwrap();
        assert_eq!(mode(&base.join("new")), 0o700);
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            safe_parent(&open),
            Err(AccessError::Writable { .. })
        ));
        assert!(check_socket_dir(&open).is_err());
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        safe_parent(&open).unwrap();
        check_socket_dir(&open).unwrap();
        check_socket_dir(&base.join("missing")).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn verdicts() {
        let me = current_uid();
        let access = Access::new(Some(4242));
        let own = PeerCred {
            pid: std::process::id(),
            uid: me,
            gid: 1,
        };
        assert_eq!(access.verdict(&own), Verdict::Client);
        let root = PeerCred { uid: 0, ..own };
        assert_eq!(access.verdict(&root), Verdict::Client);
        let stranger = PeerCred {
            pid: 1,
            uid: 54321,
            gid: 54321,
        };
        let stranger = if me == 54321 {
            PeerCred {
                uid: 54322,
                ..stranger
            }
        } else {
            stranger
        };
        assert_eq!(access.verdict(&stranger), Verdict::Refused);
        let member = PeerCred {
            gid: 4242,
            ..stranger
        };
        assert_eq!(access.verdict(&member), Verdict::Client);
        // A child of this process under another uid: a worker only.
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut guard = scopeguard(child);
        let worker = PeerCred {
            pid: guard.0.id(),
            ..stranger
        };
        assert_eq!(access.verdict(&worker), Verdict::WorkerOnly);
        assert!(access.is_child(guard.0.id()));
        assert!(!access.is_child(1));
        guard.0.kill().unwrap();
        guard.0.wait().unwrap();
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(
            resolve_group("no-such-group-shoal"),
            Err(AccessError::NoSuchGroup(_))
        ));
    }

    /// Kills the child if the test fails before it does.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                if let Err(e) = self.0.kill() {
                    eprintln!("cannot kill the test child: {e}");
                }
                if let Err(e) = self.0.wait() {
                    eprintln!("cannot reap the test child: {e}");
                }
            }
        }
    }
    fn scopeguard(child: std::process::Child) -> Guard {
        Guard(child)
    }
}
