//! The state file of a tool that starts processes meant to outlive it (`scripts/mesh`,
//! `scripts/netlab`): `$TMPDIR/<tool>-$UID/state.json`, written whole or not at all and
//! readable by its owner only (it holds a join token), and the node directories beside it,
//! which are the only directories the tool ever removes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where one tool keeps what it started, for its `status` and `down`.
#[derive(Clone, Copy, Debug)]
pub struct StateFile {
    tool: &'static str,
}

impl StateFile {
    /// The state of `tool` (its name, as in `shoal-mesh`).
    pub const fn new(tool: &'static str) -> Self {
        Self { tool }
    }

    /// `<tool>-$UID`: this user's instance of the tool (its directory's name, and a prefix
    /// for what it makes outside it).
    pub fn name(&self) -> String {
        // SAFETY: getuid cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        format!("{}-{uid}", self.tool)
    }

    /// `$TMPDIR/<tool>-$UID`: the state file and the node directories.
    pub fn dir(&self) -> PathBuf {
        std::env::temp_dir().join(self.name())
    }

    /// The state file itself.
    pub fn path(&self) -> PathBuf {
        self.dir().join("state.json")
    }

    /// The recorded state, if there is one.
    pub fn read<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} is not a state file of {}; remove it if nothing of {0} runs",
                    path.display(),
                    self.tool
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state whole or not at all (a temporary file renamed over the old one), with
    /// mode 0600.
    pub fn write<T: Serialize>(&self, state: &T) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path();
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Removes a node directory, but only one inside [`StateFile::dir`]; one already gone is
    /// fine.
    pub fn remove_node_dir(&self, dir: &Path) -> Result<()> {
        let root = self.dir();
        let root = root.canonicalize().unwrap_or(root);
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        if !dir.starts_with(&root) || dir == root {
            bail!(
                "{} is not inside {}; not removing it",
                dir.display(),
                root.display()
            );
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        }
    }
}
