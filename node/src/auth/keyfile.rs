//! Publisher key files and manifest sidecars: the one place the SDK, the `shoal` command
//! line and the node read and make them. (Unlike the rest of [`crate::auth`], this does
//! file IO.)
//!
//! - A key file holds one [`Publisher`] in its text form, mode 0600.
//! - The per-user default key is `$XDG_CONFIG_HOME/shoal/publisher.key`, else
//!   `$HOME/.config/shoal/publisher.key`. The SDK makes it on first use (in a 0700
//!   directory, atomically: concurrent first uses agree on one key) and signs the program it
//!   ships with it; a node trusts it (a user signs their own programs).
//! - `SHOAL_PUBLISHER_KEY` names another key file for the SDK to sign with; `none` ships
//!   unsigned.
//! - `shoal sign BINARY` writes `BINARY.shoal-manifest`, a sidecar the SDK ships instead of
//!   signing when it matches the executable.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::code::{Manifest, Publisher};
use super::{AuthError, KeyBytes};

/// The environment variable naming the key file the SDK signs with (`none`: unsigned).
pub const PUBLISHER_KEY_ENV: &str = "SHOAL_PUBLISHER_KEY";
/// What a sidecar manifest's name adds to its binary's.
pub const SIDECAR_SUFFIX: &str = ".shoal-manifest";

/// Why a key file or sidecar could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Its contents are not a key or a manifest.
    #[error("{path}: {source}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: AuthError,
    },
    /// Neither `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("no default publisher key path: neither XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The per-user default key file's path.
pub fn default_key_path() -> Result<PathBuf, KeyFileError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or(KeyFileError::NoHome)?,
        )
        .join(".config"),
    };
    Ok(base.join("shoal").join("publisher.key"))
}

/// Reads the key file at `path`.
pub fn read_key(path: &Path) -> Result<Publisher, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Publisher::from_text(&text).map_err(|source| KeyFileError::Bad {
        path: path.to_path_buf(),
        source,
    })
}

/// The key at `path`, made if there is none; says whether it was made here. Concurrent
/// callers agree on one key: each writes a temporary file and hard-links it into place,
/// which fails if another was first; the loser reads the winner's.
pub fn load_or_create(path: &Path) -> Result<(Publisher, bool), KeyFileError> {
    match read_key(path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other.map(|p| (p, false)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let key = Publisher::generate();
    let nonce = u64::from_le_bytes(crate::random_bytes());
    let tmp = path.with_extension(format!("tmp-{}-{nonce:016x}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    if let Err(e) = std::fs::remove_file(&tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a temporary key file");
        }
    }
    match written {
        Ok(()) => Ok((key, true)),
        // Another process made it first: its key is the one.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key(path).map(|p| (p, false)),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a new key to `path` (0600, in a 0700 directory); an existing file is kept and is
/// an error.
pub fn create_new(path: &Path) -> Result<Publisher, KeyFileError> {
    match load_or_create(path)? {
        (key, true) => Ok(key),
        (_, false) => Err(KeyFileError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "a key file is there already"),
        }),
    }
}

/// The public key of the per-user default publisher key, if that file exists (what a node
/// trusts besides `--trust-publisher`).
pub fn default_public() -> Result<Option<KeyBytes>, KeyFileError> {
    let path = default_key_path()?;
    match read_key(&path) {
        Ok(p) => Ok(Some(p.public())),
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The key a program signs what it ships with: `$SHOAL_PUBLISHER_KEY` (`none`: no key),
/// else the per-user default key, made on first use.
pub fn signing_key() -> Result<Option<Publisher>, KeyFileError> {
    match std::env::var_os(PUBLISHER_KEY_ENV).filter(|v| !v.is_empty()) {
        Some(v) if v == "none" => Ok(None),
        Some(v) => read_key(Path::new(&v)).map(Some),
        None => load_or_create(&default_key_path()?).map(|(p, _)| Some(p)),
    }
}

/// Where the sidecar manifest of `binary` is.
pub fn sidecar_path(binary: &Path) -> PathBuf {
    let mut name = binary.as_os_str().to_os_string();
    name.push(SIDECAR_SUFFIX);
    PathBuf::from(name)
}

/// The sidecar manifest of `binary`, if there is one and it names `id` and `target` (a
/// stale one, left from another build, is ignored).
pub fn read_sidecar(
    binary: &Path,
    id: &[u8; 32],
    target: &str,
) -> Result<Option<Manifest>, KeyFileError> {
    let path = sidecar_path(binary);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let m = Manifest::decode(&bytes).map_err(|source| KeyFileError::Bad {
        path: path.clone(),
        source,
    })?;
    Ok((&m.binary == id && m.target == target).then_some(m))
}

/// Writes `manifest` as the sidecar of `binary`; returns its path.
pub fn write_sidecar(binary: &Path, manifest: &Manifest) -> Result<PathBuf, KeyFileError> {
    let path = sidecar_path(binary);
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, manifest.encode()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// The manifest a program ships for its executable `exe` (blake3 `id`, built for
/// `target`): its matching sidecar, else one signed now with [`signing_key`]; `None` when
/// unsigned (`SHOAL_PUBLISHER_KEY=none`).
pub fn manifest_for(
    exe: &Path,
    id: &[u8; 32],
    target: &str,
    now: u64,
) -> Result<Option<Manifest>, KeyFileError> {
    if let Some(m) = read_sidecar(exe, id, target)? {
        return Ok(Some(m));
    }
    Ok(signing_key()?.map(|k| k.sign(*id, target, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-keyfile-{name}-{}-{:x}",
            std::process::id(),
            u64::from_le_bytes(crate::random_bytes())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn concurrent_first_uses_agree_on_one_private_key() {
        let d = scratch("race");
        let path = d.join("conf").join("shoal").join("publisher.key");
        let keys: Vec<KeyBytes> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(&path).unwrap().0.public()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(read_key(&path).unwrap().public(), keys[0]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // No temporary file is left behind, and an existing key is never replaced.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert!(create_new(&path).is_err());
        assert_eq!(read_key(&path).unwrap().public(), keys[0]);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Bad { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_sidecar_is_used_only_for_its_own_binary_and_target() {
        let d = scratch("sidecar");
        let exe = d.join("prog");
        std::fs::write(&exe, b"the program").unwrap();
        let id = *blake3::hash(b"the program").as_bytes();
        assert_eq!(read_sidecar(&exe, &id, "t1").unwrap(), None);
        let p = Publisher::generate();
        let m = p.sign(id, "t1", 7);
        let path = write_sidecar(&exe, &m).unwrap();
        assert_eq!(path, d.join("prog.shoal-manifest"));
        assert_eq!(read_sidecar(&exe, &id, "t1").unwrap(), Some(m.clone()));
        assert_eq!(manifest_for(&exe, &id, "t1", 9).unwrap(), Some(m));
        // Rebuilt (another id) or for another target: ignored.
        assert_eq!(read_sidecar(&exe, &[1; 32], "t1").unwrap(), None);
        assert_eq!(read_sidecar(&exe, &id, "t2").unwrap(), None);
        std::fs::write(&path, b"junk").unwrap();
        assert!(read_sidecar(&exe, &id, "t1").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
