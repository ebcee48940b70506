//! Test authorities: each test mesh is a real mesh with its own authority, made with the
//! `shoal mesh` commands (as an operator makes one), never a bypass of admission.
//!
//! [`token`] gives the join token of a mesh name, made once per process: every node a test
//! starts with [`crate::NodeOptions::mesh`] of that name joins with it, so nodes of two names
//! are of two meshes. [`TestAuthority`] keeps the authority key for tests that issue more
//! tokens or revoke.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use crate::node::shoal_bin;
use crate::process::TestDir;

/// A mesh authority made for a test, in a directory removed when it is dropped.
#[derive(Debug)]
pub struct TestAuthority {
    dir: TestDir,
    mesh: String,
    bin: PathBuf,
}

impl TestAuthority {
    /// Makes the authority of mesh `mesh` (`shoal mesh init`).
    pub fn new(mesh: &str) -> Result<Self> {
        let bin = shoal_bin()?;
        let dir = TestDir::create_in(&std::env::temp_dir(), "shoal-authority")?;
        let this = Self {
            dir,
            mesh: mesh.to_string(),
            bin,
        };
        this.run(&[
            "init",
            "--mesh",
            mesh,
            "--out",
            &this.key_path().to_string_lossy(),
        ])?;
        Ok(this)
    }

    /// The mesh's name.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The authority key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("mesh.authority")
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("mesh")
            .args(args)
            .output()
            .with_context(|| format!("running shoal mesh {args:?}"))?;
        if !out.status.success() {
            bail!(
                "shoal mesh {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// `shoal mesh invite` with these extra arguments (`--role`, `--expires`, `--peer`,
    /// `--bootstrap`): the token.
    pub fn invite(&self, extra: &[&str]) -> Result<String> {
        let key = self.key_path();
        let mut args = vec!["invite", "--authority", key.to_str().context("key path")?];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `shoal mesh revoke --peer ID`: the revocation.
    pub fn revoke_peer(&self, peer: &str) -> Result<String> {
        let key = self.key_path();
        self.run(&[
            "revoke",
            "--authority",
            key.to_str().context("key path")?,
            "--peer",
            peer,
        ])
    }

    /// `shoal mesh trust-publisher KEY`: the grant naming publisher `key` (hex).
    pub fn trust_publisher(&self, key: &str) -> Result<String> {
        let path = self.key_path();
        self.run(&[
            "trust-publisher",
            "--authority",
            path.to_str().context("key path")?,
            key,
        ])
    }

    /// Hands a statement of the authority (a revocation or a publisher grant) to the node
    /// whose data directory is `data_dir` (`shoal mesh publish`).
    pub fn publish(&self, revocation: &str, data_dir: &Path) -> Result<()> {
        self.run(&[
            "publish",
            revocation,
            "--data-dir",
            data_dir.to_str().context("data dir")?,
        ])?;
        Ok(())
    }
}

/// The join token of test mesh `mesh` (a node invite valid for a day), made once per process.
pub fn token(mesh: &str) -> Result<String> {
    static TOKENS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut tokens = TOKENS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(t) = tokens.get(mesh) {
        return Ok(t.clone());
    }
    // The authority is needed only to make the token: its directory goes when this returns.
    let authority = TestAuthority::new(mesh)?;
    let token = authority.invite(&["--expires", "1d"])?;
    tokens.insert(mesh.to_string(), token.clone());
    Ok(token)
}

/// The public key (hex) of this user's default publisher key, made if there is none
/// (`shoal publisher init`, with the `shoal` binary `bin`), once per process. Every node the harness starts trusts it (a
/// node trusts its user's default key), and the drivers the tests start sign with it (the
/// SDK's default): so code ships between the harness's nodes as before signing existed.
pub fn default_publisher(bin: &Path) -> Result<String> {
    static KEY: OnceLock<Result<String, String>> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = Command::new(bin)
            .args(["publisher", "init"])
            .output()
            .map_err(|e| format!("running shoal publisher init: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "shoal publisher init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}
