//! The shared-memory object store of one node.
//!
//! Large objects live as files in one directory (under `/dev/shm` by default), each named by
//! its object id in hex. A writer (driver or worker) asks the node to reserve room under a
//! ticket id; the node makes `<ticket>.partial` ([`OpKind::Create`]), the writer maps and
//! fills it and asks the node to seal it; the node renames it to `<id>` ([`OpKind::Seal`]),
//! so a half-written object is never visible under an object's name. Readers map the file
//! read-only: no bytes go through the node or a socket.
//!
//! When memory is short, objects go to a spill directory on disk (least recently used first,
//! [`OpKind::Spill`]) and come back when read, their digest checked ([`OpKind::Restore`]).
//!
//! The store is split the sans-IO way: [`StoreIndex`] is the pure bookkeeping (capacity,
//! locations, pins, what to evict or spill) that the node's core keeps and decides with;
//! [`StoreOp`]s are what it asks of the files; [`StoreFiles`] owns the directories and
//! carries the ops out, in order, off the event loop.

use std::io;
use std::path::{Path, PathBuf};

use shoal_protocol::{Digest, NodeId, ObjectId};

mod index;
mod ops;

pub use index::{Holder, Location, Plan, Sealed, StoreIndex};
pub use ops::{OpId, OpKind, StoreDone, StoreFault, StoreOp};

/// Inputs at least this long are hashed on two threads.
const PARALLEL_HASH_MIN: usize = 4 << 20;

/// The blake3 digest of `bytes`: the two halves of the hash tree on two threads for large
/// inputs (the same digest as [`Digest::of`]). Shared by the node (which takes the digests
/// of puts, checks restores) and the SDK (which checks copies in place).
pub fn digest(bytes: &[u8]) -> Digest {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_root, HasherExt, Mode};
    if bytes.len() < PARALLEL_HASH_MIN {
        return Digest::of(bytes);
    }
    let split = left_subtree_len(bytes.len() as u64);
    let (left, right) = bytes.split_at(split as usize);
    let (l, r) = std::thread::scope(|s| {
        let r = s.spawn(|| {
            let mut h = blake3::Hasher::new();
            h.set_input_offset(split);
            h.update(right);
            h.finalize_non_root()
        });
        let mut h = blake3::Hasher::new();
        h.update(left);
        let l = h.finalize_non_root();
        (l, r.join())
    });
    match r {
        Ok(r) => Digest(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()),
        // The hashing thread cannot panic on a slice; hash in one piece if it somehow did.
        Err(_) => Digest::of(bytes),
    }
}

/// The store's directories and files: the side of the store that does I/O. It carries out
/// the core's [`StoreOp`]s, in order, on a blocking thread of the shell.
#[derive(Debug)]
pub struct StoreFiles {
    dir: PathBuf,
    spill_dir: PathBuf,
    capacity: u64,
    /// Mode of the object files: 0600, or 0660 when shared with the socket group or when
    /// the directory's default ACL gives the sandbox's worker user access
    /// ([`StoreFiles::follow_acl`]).
    file_mode: u32,
    /// Whether the store is shared with the socket group.
    shared: bool,
    pool: Pool,
}

/// Files of freed objects kept for reuse: writing into memory that is already faulted in runs
/// at memory speed, while a fresh shared-memory file costs a page fault and a zeroed page per
/// 4 KiB (about 1.5 GB/s against 12 GB/s on the machine this was measured on). Pooled bytes
/// count against the store's capacity and are the first to go when room is needed.
///
/// A file is only pooled when no reader has it open: readers hold a shared `flock` on an
/// object's file while they map it, and the store takes an exclusive one, without waiting,
/// before it recycles a file (otherwise it just unlinks it).
#[derive(Debug)]
struct Pool {
    dir: PathBuf,
    files: Vec<(PathBuf, u64)>,
    bytes: u64,
    limit: u64,
    next: u64,
}

/// Files smaller than this are not worth pooling.
const POOL_MIN_FILE: u64 = 1 << 20;

impl Pool {
    /// Takes a pooled file of at least `size` bytes (and at most twice that), the smallest;
    /// of equal ones, the one pooled last: its pages are the likeliest in the caches, and a
    /// writer that puts, drops and puts again gets back the file it still has mapped (the
    /// SDK keeps its last write's mapping).
    fn take(&mut self, size: u64) -> Option<PathBuf> {
        let best = self
            .files
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, (_, len))| *len >= size && *len <= size.saturating_mul(2))
            .min_by_key(|(_, (_, len))| *len)
            .map(|(i, _)| i)?;
        // (In order: the files stay in the order they were pooled.)
        let (path, len) = self.files.remove(best);
        self.bytes -= len;
        Some(path)
    }

    /// Drops pooled files, largest first, until `need` bytes are freed or none is left.
    fn shrink(&mut self, mut need: u64) {
        self.files.sort_by_key(|(_, len)| *len);
        while need > 0 {
            let Some((path, len)) = self.files.pop() else {
                break;
            };
            remove_file(&path);
            self.bytes -= len;
            need = need.saturating_sub(len);
        }
    }

    /// Recycles the file of a freed object if it is large enough and no reader holds it;
    /// otherwise removes it.
    fn recycle(&mut self, path: &Path, size: u64) {
        if size < POOL_MIN_FILE || size > self.limit {
            remove_file(path);
            return;
        }
        if self.bytes + size > self.limit {
            self.shrink(self.bytes + size - self.limit);
        }
        let pooled = self.dir.join(format!("{}", self.next));
        match lock_exclusive(path) {
            Some(_locked) => match std::fs::rename(path, &pooled) {
                Ok(()) => {
                    self.next += 1;
                    self.files.push((pooled, size));
                    self.bytes += size;
                }
                Err(_) => remove_file(path),
            },
            None => remove_file(path),
        }
    }
}

/// Opens `path` and takes an exclusive `flock` on it without waiting: `None` if a reader
/// holds it (or it cannot be opened). The lock lasts as long as the returned file.
fn lock_exclusive(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(file)
}

/// The pool directory inside store directory `dir` (hidden: objects are the visible files).
pub fn pool_dir(dir: &Path) -> PathBuf {
    dir.join(".pool")
}

/// The file of object `id` in store directory `dir`.
pub fn object_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(id.to_hex())
}

/// The file a writer fills before the node renames it to [`object_path`].
pub fn partial_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(format!("{}.partial", id.to_hex()))
}

impl StoreFiles {
    /// Makes the directories `shoal-<pid>-<node id>` under `parent` (memory) and
    /// `spill_parent` (disk), first removing directories left there by nodes of this user
    /// whose process is gone. `capacity` bounds the memory files, objects and files kept for
    /// reuse alike. The directories and files are this user's alone; see
    /// [`StoreFiles::open_shared`].
    pub fn open(
        parent: &Path,
        spill_parent: &Path,
        node: NodeId,
        capacity: u64,
    ) -> io::Result<Self> {
        Self::open_shared(parent, spill_parent, node, capacity, None)
    }

    /// [`StoreFiles::open`], with the store directory and its files shared with `group` (the
    /// socket group, whose members attach as drivers and write objects): the directory is
    /// mode 2710 (they may open a file they know the name of, never list), its files 0660.
    /// Without a group the directories are 0700 and the files 0600 (0660 once the sandbox's
    /// ACL is on the directory: [`StoreFiles::follow_acl`]). The spill directory is
    /// the node's alone either way. A directory that exists already is refused when it has
    /// another owner or others may write to it ([`crate::runtime::access`]).
    pub fn open_shared(
        parent: &Path,
        spill_parent: &Path,
        node: NodeId,
        capacity: u64,
        group: Option<u32>,
    ) -> io::Result<Self> {
        use crate::runtime::access::{private_dir, safe_parent};
        safe_parent(parent)?;
        if spill_parent == crate::config::default_spill_parent() {
            private_dir(spill_parent, None, false)?;
        } else {
            safe_parent(spill_parent)?;
        }
        remove_stale_dirs(parent);
        remove_stale_dirs(spill_parent);
        let name = format!("shoal-{}-{}", std::process::id(), node);
        let dir = parent.join(&name);
        private_dir(&dir, group, true)?;
        let spill_dir = spill_parent.join(&name);
        private_dir(&spill_dir, None, false)?;
        let pool = pool_dir(&dir);
        private_dir(&pool, None, false)?;
        Ok(Self {
            dir,
            spill_dir,
            capacity,
            file_mode: if group.is_some() { 0o660 } else { 0o600 },
            shared: group.is_some(),
            pool: Pool {
                dir: pool,
                files: Vec::new(),
                bytes: 0,
                limit: capacity / 2,
                next: 0,
            },
        })
    }

    /// Picks the mode of new object files by the store directory's default ACL, once the
    /// sandbox has given its worker user access there
    /// ([`crate::runtime::sandbox::Sandbox::grant_store`]). With a default ACL, a new
    /// file's group bits become its ACL *mask*, which bounds the named-user entries: 0600
    /// would make the mask `---` and take the worker user's access away. So when the default
    /// ACL gives the owning group nothing (`group::---`), files are made 0660: the mask is
    /// `rw-`, the worker user's entry takes effect, and the owning group still gets
    /// nothing (as `getfacl` shows; `stat` shows 0660, the mask). Without such an ACL files
    /// stay 0600 (0660 with the socket group). Returns the mode chosen.
    pub fn follow_acl(&mut self) -> u32 {
        if !self.shared {
            self.file_mode = match default_acl_group(&self.dir) {
                Ok(Some(0)) => 0o660,
                Ok(_) => 0o600,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the store's default ACL; its files stay 0600");
                    0o600
                }
            };
        }
        self.file_mode
    }

    /// Opens a new object file for writing with the store's file mode (the umask may only
    /// narrow it, so a group-shared store sets it again).
    fn new_file(&self, path: &Path) -> io::Result<std::fs::File> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.file_mode)
            .open(path)?;
        if self.file_mode != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(self.file_mode))?;
        }
        Ok(file)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spill directory.
    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// Carries out one op; its completion when it has an [`OpId`]. Failures of ops without
    /// one (dropping files) are logged here.
    pub fn run(&mut self, op: StoreOp) -> Option<StoreDone> {
        // Files kept for reuse give way to the objects first.
        let over = (op.used + self.pool.bytes).saturating_sub(self.capacity);
        if over > 0 {
            self.pool.shrink(over);
        }
        let mut taken = None;
        let result = match op.kind {
            OpKind::Create { id, size } => self.create(&id, size),
            OpKind::Seal {
                ticket,
                id,
                size,
                keep,
            } => self.seal(&ticket, &id, size, keep, op.used),
            OpKind::DropPartial { id } => {
                remove_file(&partial_path(&self.dir, &id));
                Ok(())
            }
            OpKind::DropMemory { id, size } => {
                self.recycle(&object_path(&self.dir, &id), size, op.used);
                Ok(())
            }
            OpKind::DropDisk { id } => {
                remove_file(&object_path(&self.spill_dir, &id));
                Ok(())
            }
            OpKind::Spill { id, size, digest } => {
                if digest {
                    match self.digest(&id) {
                        Ok(d) => taken = Some(d),
                        Err(e) => {
                            return op.op.map(|op| StoreDone {
                                op,
                                result: Err(e),
                                digest: None,
                            })
                        }
                    }
                }
                self.spill(&id, size, op.used)
            }
            OpKind::Digest { id } => self.digest(&id).map(|d| taken = Some(d)),
            OpKind::Restore { id, digest } => self.restore(&id, digest),
        };
        match (op.op, result) {
            (Some(op), result) => Some(StoreDone {
                op,
                result,
                digest: taken,
            }),
            (None, Ok(())) => None,
            (None, Err(e)) => {
                tracing::warn!(error = %e, "a store file operation failed");
                None
            }
        }
    }

    fn create(&mut self, id: &ObjectId, size: u64) -> Result<(), StoreFault> {
        let partial = partial_path(&self.dir, id);
        let made = match self.pool.take(size) {
            Some(pooled) => std::fs::rename(&pooled, &partial)
                .and_then(|()| std::fs::OpenOptions::new().write(true).open(&partial)),
            None => self.new_file(&partial),
        }
        .and_then(|file| file.set_len(size));
        made.map_err(|e| {
            remove_file(&partial);
            StoreFault::Io(format!("creating object {id}: {e}"))
        })
    }

    fn seal(
        &mut self,
        ticket: &ObjectId,
        id: &ObjectId,
        size: u64,
        keep: bool,
        used: u64,
    ) -> Result<(), StoreFault> {
        let partial = partial_path(&self.dir, ticket);
        let fail = |e: StoreFault| {
            remove_file(&partial);
            Err(e)
        };
        let len = match std::fs::metadata(&partial) {
            Ok(m) => m.len(),
            Err(e) => return fail(StoreFault::Io(format!("sealing {id}: {e}"))),
        };
        if len != size {
            return fail(StoreFault::Mismatch(format!(
                "object {id} file has {len} bytes, sealed as {size}"
            )));
        }
        if !keep {
            self.recycle(&partial, size, used);
            return Ok(());
        }
        match std::fs::rename(&partial, object_path(&self.dir, id)) {
            Ok(()) => Ok(()),
            Err(e) => fail(StoreFault::Io(format!("sealing {id}: {e}"))),
        }
    }

    fn spill(&mut self, id: &ObjectId, size: u64, used: u64) -> Result<(), StoreFault> {
        let from = object_path(&self.dir, id);
        let to = object_path(&self.spill_dir, id);
        match std::fs::copy(&from, &to) {
            Ok(_) => {
                self.recycle(&from, size, used);
                tracing::debug!(object = %id, "spilled to disk");
                Ok(())
            }
            Err(e) => {
                remove_file(&to);
                Err(StoreFault::Io(format!(
                    "spilling {id} to {}: {e}",
                    to.display()
                )))
            }
        }
    }

    /// The digest of object `id`'s memory file, read in place.
    fn digest(&self, id: &ObjectId) -> Result<Digest, StoreFault> {
        let path = object_path(&self.dir, id);
        let file = std::fs::File::open(&path)
            .map_err(|e| StoreFault::Io(format!("opening {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| StoreFault::Io(format!("reading {}: {e}", path.display())))?
            .len();
        if len == 0 {
            return Ok(Digest::of(&[]));
        }
        // SAFETY: a sealed object's file is never written again: its writer sealed it, and
        // the store only renames, recycles or removes it, by ops that run after this one.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| StoreFault::Io(format!("mapping {}: {e}", path.display())))?;
        Ok(digest(&map))
    }

    fn restore(&self, id: &ObjectId, digest: Digest) -> Result<(), StoreFault> {
        let from = object_path(&self.spill_dir, id);
        let bytes = std::fs::read(&from)
            .map_err(|e| StoreFault::Io(format!("reading {}: {e}", from.display())))?;
        let found = self::digest(&bytes);
        if found != digest {
            return Err(StoreFault::Corrupted(format!(
                "{} has digest {found}, recorded {digest}",
                from.display()
            )));
        }
        let tmp = self.dir.join(format!("{}.restoring", id.to_hex()));
        self.new_file(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .and_then(|()| std::fs::rename(&tmp, object_path(&self.dir, id)))
            .map_err(|e| {
                remove_file(&tmp);
                StoreFault::Io(format!("restoring {id}: {e}"))
            })?;
        tracing::debug!(object = %id, "read back from disk");
        Ok(())
    }

    /// Keeps a freed object's file for reuse when it fits within the capacity beside `used`
    /// bytes of objects; removes it otherwise.
    fn recycle(&mut self, path: &Path, size: u64, used: u64) {
        if used + self.pool.bytes + size > self.capacity {
            remove_file(path);
            return;
        }
        self.pool.recycle(path, size);
    }

    /// Removes the directories and everything in them.
    pub fn destroy(&self) {
        for dir in [&self.dir, &self.spill_dir, &self.pool.dir] {
            remove_dir(dir);
        }
    }

    /// Bytes of freed objects' files kept for reuse.
    pub fn pooled_bytes(&self) -> u64 {
        self.pool.bytes
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove store file");
        }
    }
}

fn remove_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a store directory");
        }
    }
}

/// The permissions of the `group::` (owning group) entry of `dir`'s default ACL, if it has
/// a default ACL (the xattr form of acl(5): a version, then (tag, perm, id) entries).
fn default_acl_group(dir: &Path) -> io::Result<Option<u16>> {
    use std::os::unix::ffi::OsStrExt;
    const GROUP_OBJ: u16 = 0x04;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut buf = [0u8; 4 + 8 * 64];
    // SAFETY: both strings are NUL-terminated; getxattr writes at most `buf.len()` bytes.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.posix_acl_default".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // No default ACL, or no ACL support: plain modes.
            Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    let acl = &buf[..n as usize];
    if acl.len() < 4 || (acl.len() - 4) % 8 != 0 {
        return Err(io::Error::other(format!(
            "malformed default ACL ({} bytes)",
            acl.len()
        )));
    }
    Ok(acl[4..]
        .chunks_exact(8)
        .find(|e| u16::from_le_bytes([e[0], e[1]]) == GROUP_OBJ)
        .map(|e| u16::from_le_bytes([e[2], e[3]])))
}

/// Removes `shoal-<pid>-*` directories under `parent` whose pid no longer runs, when they
/// are this user's (never another user's, nor what a symbolic link points to).
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("shoal-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || process_alive(pid) || !crate::runtime::access::owned_dir(&entry.path()) {
            continue;
        }
        tracing::info!(dir = %entry.path().display(), pid, "removing store directory of a dead node");
        remove_dir(&entry.path());
    }
}

/// Whether a process with this pid exists (and is not a zombie we could tell apart).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_digest_is_blake3() {
        for len in [
            0,
            1,
            1024,
            PARALLEL_HASH_MIN,
            PARALLEL_HASH_MIN + 12345,
            9 << 20,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(digest(&bytes), Digest::of(&bytes), "len {len}");
        }
    }

    fn op(kind: OpKind) -> StoreOp {
        StoreOp {
            op: Some(1),
            used: 0,
            kind,
        }
    }

    fn run(files: &mut StoreFiles, kind: OpKind) -> Result<(), StoreFault> {
        files
            .run(op(kind))
            .expect("an op with a number completes")
            .result
    }

    /// Creates, fills and seals `id`.
    fn write(files: &mut StoreFiles, id: ObjectId, bytes: &[u8]) {
        let size = bytes.len() as u64;
        run(files, OpKind::Create { id, size }).unwrap();
        std::fs::write(partial_path(files.dir(), &id), bytes).unwrap();
        run(
            files,
            OpKind::Seal {
                ticket: id,
                id,
                size,
                keep: true,
            },
        )
        .unwrap();
    }

    #[test]
    fn files_spill_restore_and_stale_dirs() {
        let parent = std::env::temp_dir().join(format!("shoal-store-test-{}", std::process::id()));
        let spill = parent.join("spill");
        std::fs::create_dir_all(&spill).unwrap();
        // A directory of a pid that cannot exist is stale.
        let stale = parent.join("shoal-2147483646-abc");
        let stale_spill = spill.join("shoal-2147483646-abc");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::create_dir_all(&stale_spill).unwrap();
        let mut files = StoreFiles::open(&parent, &spill, NodeId([3; 16]), 10).unwrap();
        assert!(!stale.exists() && !stale_spill.exists());

        let (a, b) = (ObjectId([1; 32]), ObjectId([2; 32]));
        // The directories and files are this user's alone.
        use std::os::unix::fs::MetadataExt;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        for dir in [files.dir(), files.spill_dir(), &pool_dir(files.dir())] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        run(&mut files, OpKind::Create { id: a, size: 6 }).unwrap();
        assert_eq!(mode(&partial_path(files.dir(), &a)), 0o600);
        files.run(StoreOp {
            op: None,
            used: 0,
            kind: OpKind::DropPartial { id: a },
        });
        write(&mut files, a, b"aaaaaa");
        assert!(object_path(files.dir(), &a).exists());
        run(
            &mut files,
            OpKind::Spill {
                id: a,
                size: 6,
                digest: false,
            },
        )
        .unwrap();
        assert!(!object_path(files.dir(), &a).exists());
        assert!(object_path(files.spill_dir(), &a).exists());
        let digest = Digest::of(b"aaaaaa");
        run(&mut files, OpKind::Restore { id: a, digest }).unwrap();
        assert_eq!(
            std::fs::read(object_path(files.dir(), &a)).unwrap(),
            b"aaaaaa"
        );
        assert_eq!(mode(&object_path(files.dir(), &a)), 0o600);
        assert_eq!(mode(&object_path(files.spill_dir(), &a)), 0o600);
        // A corrupted disk copy is detected, not restored.
        write(&mut files, b, b"bbbbbb");
        run(
            &mut files,
            OpKind::Spill {
                id: b,
                size: 6,
                digest: false,
            },
        )
        .unwrap();
        std::fs::write(object_path(files.spill_dir(), &b), b"bbbbbX").unwrap();
        let digest = Digest::of(b"bbbbbb");
        assert!(matches!(
            run(&mut files, OpKind::Restore { id: b, digest }),
            Err(StoreFault::Corrupted(_))
        ));
        assert!(!object_path(files.dir(), &b).exists());
        // A digest is taken of a memory file, or by a spill asked to; a file that is not
        // there has none.
        let taken = |files: &mut StoreFiles, kind| files.run(op(kind)).and_then(|d| d.digest);
        let d = ObjectId([4; 32]);
        write(&mut files, d, b"dddddd");
        assert_eq!(
            taken(&mut files, OpKind::Digest { id: d }),
            Some(Digest::of(b"dddddd"))
        );
        let spill = OpKind::Spill {
            id: d,
            size: 6,
            digest: true,
        };
        assert_eq!(taken(&mut files, spill), Some(Digest::of(b"dddddd")));
        assert_eq!(taken(&mut files, OpKind::Digest { id: d }), None);
        assert!(run(&mut files, OpKind::Digest { id: d }).is_err());
        files.run(StoreOp {
            op: None,
            used: 0,
            kind: OpKind::DropDisk { id: d },
        });
        // A spill of a file that is not there fails and leaves nothing on disk.
        let c = ObjectId([3; 32]);
        assert!(run(
            &mut files,
            OpKind::Spill {
                id: c,
                size: 6,
                digest: false
            }
        )
        .is_err());
        assert!(!object_path(files.spill_dir(), &c).exists());
        // Dropping files needs no completion.
        for kind in [
            OpKind::DropMemory { id: a, size: 6 },
            OpKind::DropDisk { id: a },
            OpKind::DropDisk { id: b },
        ] {
            assert_eq!(
                files.run(StoreOp {
                    op: None,
                    used: 0,
                    kind
                }),
                None
            );
        }
        // Only the (empty: these files are tiny) pool is left.
        assert_eq!(std::fs::read_dir(files.dir()).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(pool_dir(files.dir())).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(files.spill_dir()).unwrap().count(), 0);

        // A seal whose file does not have the sealed length fails and leaves nothing.
        run(&mut files, OpKind::Create { id: a, size: 4 }).unwrap();
        std::fs::write(partial_path(files.dir(), &a), b"ab").unwrap();
        let sealed = run(
            &mut files,
            OpKind::Seal {
                ticket: a,
                id: a,
                size: 4,
                keep: true,
            },
        );
        assert!(matches!(sealed, Err(StoreFault::Mismatch(_))), "{sealed:?}");
        assert!(!partial_path(files.dir(), &a).exists());
        // A writer that goes away leaves nothing.
        run(&mut files, OpKind::Create { id: a, size: 4 }).unwrap();
        files.run(StoreOp {
            op: None,
            used: 0,
            kind: OpKind::DropPartial { id: a },
        });
        assert!(!partial_path(files.dir(), &a).exists());
        files.destroy();
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_store_shared_with_the_socket_group_lets_it_reach_the_files() {
        use std::os::unix::fs::MetadataExt;
        let parent = std::env::temp_dir().join(format!("shoal-group-test-{}", std::process::id()));
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        let mut files = StoreFiles::open_shared(
            &parent,
            &parent.join("spill"),
            NodeId([5; 16]),
            1 << 20,
            Some(gid),
        )
        .unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        let dir = meta(files.dir());
        assert_eq!((dir.mode() & 0o7777, dir.gid()), (0o2710, gid));
        // The spill directory stays the node's alone.
        assert_eq!(meta(files.spill_dir()).mode() & 0o7777, 0o700);
        let id = ObjectId([7; 32]);
        run(&mut files, OpKind::Create { id, size: 8 }).unwrap();
        let file = meta(&partial_path(files.dir(), &id));
        assert_eq!((file.mode() & 0o777, file.gid()), (0o660, gid));
        files.destroy();
        std::fs::remove_dir_all(&parent).unwrap();
    }

    /// Whether `sh -c script` succeeds as `uid`:`gid` (std drops the supplementary groups).
    fn as_user(uid: u32, gid: u32, script: &str, path: &Path) -> bool {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(path)
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn under_the_sandbox_acl_files_are_the_worker_users_and_nobody_elses() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to act as other users");
            return;
        }
        let (worker, stranger) = (65534, 54321);
        // In /dev/shm, as the store is; a parent other users may pass through.
        let parent = Path::new("/dev/shm").join(format!("shoal-acl-test-{}", std::process::id()));
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711)).unwrap();
        let mut files =
            StoreFiles::open(&parent, &parent.join("spill"), NodeId([6; 16]), 1 << 20).unwrap();
        // No ACL: files are the node's alone.
        assert_eq!(files.follow_acl(), 0o600);
        if let Err(e) = crate::runtime::sandbox::grant_dir(files.dir(), worker) {
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
            eprintln!("skipped: no ACL support here");
            std::fs::remove_dir_all(&parent).unwrap();
            return;
        }
        assert_eq!(files.follow_acl(), 0o660);
        let id = ObjectId([9; 32]);
        write(&mut files, id, b"sealed");
        let ticket = ObjectId([10; 32]);
        run(
            &mut files,
            OpKind::Create {
                id: ticket,
                size: 4,
            },
        )
        .unwrap();
        let (sealed, partial) = (
            object_path(files.dir(), &id),
            partial_path(files.dir(), &ticket),
        );
        for f in [&sealed, &partial] {
            // The mode's group bits are the ACL's mask, not the group's access.
            assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o7777, 0o660);
        }
        let read = "head -c 1 \"$1\"";
        let write = "printf x 1<> \"$1\"";
        let list = "ls \"$1\"";
        // The worker user reads an object and writes a result it is told the name of, but
        // cannot list the directory.
        assert!(as_user(worker, worker, read, &sealed));
        assert!(as_user(worker, worker, write, &partial));
        assert!(!as_user(worker, worker, list, files.dir()));
        // Mode 0600 would make the mask `---` and take the worker user's access away.
        std::fs::set_permissions(&sealed, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!as_user(worker, worker, read, &sealed));
        std::fs::set_permissions(&sealed, std::fs::Permissions::from_mode(0o660)).unwrap();
        // Another user, even of the files' group, gets nothing.
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        for g in [stranger, gid] {
            assert!(!as_user(stranger, g, read, &sealed), "gid {g}");
            assert!(!as_user(stranger, g, write, &partial), "gid {g}");
        }
        // A restored object is made the same way.
        run(
            &mut files,
            OpKind::Spill {
                id,
                size: 6,
                digest: false,
            },
        )
        .unwrap();
        assert!(!sealed.exists());
        let digest = Digest::of(b"sealed");
        run(&mut files, OpKind::Restore { id, digest }).unwrap();
        assert_eq!(std::fs::metadata(&sealed).unwrap().mode() & 0o7777, 0o660);
        assert!(as_user(worker, worker, read, &sealed));
        assert!(!as_user(stranger, gid, read, &sealed));
        files.destroy();
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn of_equal_pooled_files_the_last_pooled_is_taken_first() {
        let dir = std::env::temp_dir().join(format!("shoal-pool-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pool = Pool {
            dir: dir.clone(),
            files: Vec::new(),
            bytes: 0,
            limit: 64 << 20,
            next: 0,
        };
        let size = 2 << 20;
        for name in ["first", "second", "bigger"] {
            let path = dir.join(name);
            let len = if name == "bigger" { size + 1 } else { size };
            std::fs::File::create(&path).unwrap().set_len(len).unwrap();
            pool.recycle(&path, len);
        }
        // "second" was pooled after "first"; "bigger" is not the smallest that fits.
        assert_eq!(pool.take(size), Some(dir.join("1")));
        assert_eq!(pool.take(size), Some(dir.join("0")));
        assert_eq!(pool.take(size), Some(dir.join("2")));
        assert_eq!(pool.take(size), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn freed_files_are_reused_unless_a_reader_holds_them() {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let parent = std::env::temp_dir().join(format!("shoal-pool-test-{}", std::process::id()));
        let mut files =
            StoreFiles::open(&parent, &parent.join("spill"), NodeId([4; 16]), 64 << 20).unwrap();
        let big = vec![5u8; 2 << 20];
        let size = big.len() as u64;
        let (a, b, c) = (ObjectId([1; 32]), ObjectId([2; 32]), ObjectId([3; 32]));
        write(&mut files, a, &big);
        let inode = std::fs::metadata(object_path(files.dir(), &a))
            .unwrap()
            .ino();
        files.run(StoreOp {
            op: None,
            used: 0,
            kind: OpKind::DropMemory { id: a, size },
        });
        assert_eq!(files.pooled_bytes(), size);
        // The next file of a similar size is the same one, cut to its size.
        run(
            &mut files,
            OpKind::Create {
                id: b,
                size: size - 100,
            },
        )
        .unwrap();
        let partial = std::fs::metadata(partial_path(files.dir(), &b)).unwrap();
        assert_eq!((partial.ino(), partial.len()), (inode, size - 100));
        assert_eq!(files.pooled_bytes(), 0);
        std::fs::write(partial_path(files.dir(), &b), &big[100..]).unwrap();
        run(
            &mut files,
            OpKind::Seal {
                ticket: b,
                id: b,
                size: size - 100,
                keep: true,
            },
        )
        .unwrap();
        // A reader holds b (a shared lock, as the SDK takes while it maps): not reused.
        let reader = std::fs::File::open(object_path(files.dir(), &b)).unwrap();
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(reader.as_raw_fd(), libc::LOCK_SH) }, 0);
        files.run(StoreOp {
            op: None,
            used: 0,
            kind: OpKind::DropMemory {
                id: b,
                size: size - 100,
            },
        });
        assert_eq!(files.pooled_bytes(), 0);
        assert!(!object_path(files.dir(), &b).exists());
        drop(reader);
        // A duplicate seal's file is kept for reuse too.
        run(&mut files, OpKind::Create { id: c, size }).unwrap();
        std::fs::write(partial_path(files.dir(), &c), &big).unwrap();
        run(
            &mut files,
            OpKind::Seal {
                ticket: c,
                id: a,
                size,
                keep: false,
            },
        )
        .unwrap();
        assert_eq!(files.pooled_bytes(), size);
        assert!(!object_path(files.dir(), &a).exists());
        // Pooled bytes count against the capacity and go first when objects need the room.
        run(&mut files, OpKind::Create { id: a, size: 4096 }).unwrap();
        assert_eq!(files.pooled_bytes(), size);
        files.run(StoreOp {
            op: Some(2),
            used: 63 << 20,
            kind: OpKind::Create { id: c, size: 4096 },
        });
        assert_eq!(files.pooled_bytes(), 0);
        files.destroy();
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
