//! Signed code: which binaries from peers a node runs.
//!
//! A **publisher** is an ed25519 key (`shoal publisher init`; the SDK makes a per-user one
//! on first use). It signs a [`Manifest`] of a binary: the binary's blake3 id, its target
//! triple, the publisher's key and when it was signed (`shoal sign`, or the SDK for the
//! program it ships). A node runs a binary that a peer ships only if its [`CodePolicy`]
//! accepts the manifest that came with it: the signature verifies, the id and target are the
//! binary's, and the publisher is one the node trusts: named on its command line
//! (`--trust-publisher KEY`), or by the mesh's authority in a [`PublisherGrant`]
//! (`shoal mesh trust-publisher`, spread through the mesh like a revocation; revoking the
//! publisher's key, or the grant's expiry, ends it).

use libp2p::identity::ed25519;
use serde::{Deserialize, Serialize};
use shoal_protocol::codec;

use super::{hex, AuthError, Authority, KeyBytes, Trust};

/// Prefix of a publisher key file's contents.
pub const PUBLISHER_PREFIX: &str = "shoal-publisher-1-";
/// Bytes of an encoded manifest at most.
pub const MAX_MANIFEST: usize = 4 * 1024;
/// Prefix of a publisher grant's text form.
pub const GRANT_PREFIX: &str = "shoal-publisher-grant-1-";

/// The authority's statement that the members of `mesh` run what `publisher` signs, until
/// `expires`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherGrant {
    /// The mesh's name.
    pub mesh: String,
    /// The publisher's key.
    pub publisher: KeyBytes,
    /// When it was made (unix seconds).
    pub issued: u64,
    /// Until when it holds (unix seconds).
    pub expires: u64,
    /// The authority's key.
    pub issuer: KeyBytes,
    /// ed25519 signature over the fields above.
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct GrantBody<'a> {
    domain: &'static str,
    mesh: &'a str,
    publisher: &'a KeyBytes,
    issued: u64,
    expires: u64,
    issuer: &'a KeyBytes,
}

impl PublisherGrant {
    fn body(&self) -> Vec<u8> {
        codec::encode(&GrantBody {
            domain: "shoal/publisher-grant/1",
            mesh: &self.mesh,
            publisher: &self.publisher,
            issued: self.issued,
            expires: self.expires,
            issuer: &self.issuer,
        })
        .expect("signed fields always encode")
    }

    /// The text form `shoal mesh trust-publisher` prints.
    pub fn to_text(&self) -> String {
        let bytes = codec::encode(self).expect("a grant always encodes");
        format!("{GRANT_PREFIX}{}", super::b64(&bytes))
    }

    /// Parses the text form.
    pub fn from_text(s: &str) -> Result<Self, AuthError> {
        let body = s.trim().strip_prefix(GRANT_PREFIX).ok_or_else(|| {
            AuthError::Malformed(format!("not a publisher grant (no {GRANT_PREFIX})"))
        })?;
        codec::decode(&super::unb64(body)?, super::MAX_ENCODED)
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Checks it against the mesh `trust` anchors at `now`: the mesh's authority signed it
    /// for this mesh, it has not expired, and the publisher's key is not revoked.
    pub fn check(&self, trust: &Trust, now: u64) -> Result<(), AuthError> {
        if self.issuer != trust.authority {
            return Err(AuthError::WrongAuthority);
        }
        if self.mesh != trust.mesh {
            return Err(AuthError::WrongMesh {
                theirs: self.mesh.clone(),
                ours: trust.mesh.clone(),
            });
        }
        super::verify(
            &self.issuer,
            &self.body(),
            &self.signature,
            "a publisher grant",
        )?;
        if now > self.expires {
            return Err(AuthError::Expired {
                not_after: self.expires,
                now,
            });
        }
        if trust.is_revoked(&self.publisher) {
            return Err(AuthError::Revoked);
        }
        Ok(())
    }
}

impl Authority {
    /// Names `publisher` as one whose binaries the mesh's members run, until `expires`.
    pub fn grant_publisher(
        &self,
        publisher: KeyBytes,
        issued: u64,
        expires: u64,
    ) -> PublisherGrant {
        let mut g = PublisherGrant {
            mesh: self.mesh.clone(),
            publisher,
            issued,
            expires,
            issuer: self.public(),
            signature: Vec::new(),
        };
        g.signature = self.key.sign(&g.body());
        g
    }
}

/// A publisher's statement that the binary `binary` (a blake3 digest) for `target` is its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The binary's blake3 digest.
    pub binary: [u8; 32],
    /// Its target triple.
    pub target: String,
    /// The publisher's key.
    pub publisher: KeyBytes,
    /// When it was signed (unix seconds).
    pub issued: u64,
    /// ed25519 signature (64 bytes) over the fields above.
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct ManifestBody<'a> {
    domain: &'static str,
    binary: &'a [u8; 32],
    target: &'a str,
    publisher: &'a KeyBytes,
    issued: u64,
}

impl Manifest {
    fn body(&self) -> Vec<u8> {
        codec::encode(&ManifestBody {
            domain: "shoal/manifest/1",
            binary: &self.binary,
            target: &self.target,
            publisher: &self.publisher,
            issued: self.issued,
        })
        .expect("signed fields always encode")
    }

    /// Encodes it (for the wire and for files).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("a manifest always encodes")
    }

    /// Decodes one, bounded.
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthError> {
        codec::decode(bytes, MAX_MANIFEST).map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

/// A publisher's key: signs manifests.
pub struct Publisher {
    key: ed25519::Keypair,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("key", &hex(&self.public()))
            .finish()
    }
}

impl Publisher {
    /// A new publisher key.
    pub fn generate() -> Self {
        Self {
            key: ed25519::Keypair::generate(),
        }
    }

    /// Its public key (what nodes trust).
    pub fn public(&self) -> KeyBytes {
        self.key.public().to_bytes()
    }

    /// The key file's contents (a secret).
    pub fn to_text(&self) -> String {
        format!("{PUBLISHER_PREFIX}{}\n", super::b64(&self.key.to_bytes()))
    }

    /// Reads a key file's contents.
    pub fn from_text(s: &str) -> Result<Self, AuthError> {
        let body = s
            .trim()
            .strip_prefix(PUBLISHER_PREFIX)
            .ok_or_else(|| AuthError::Malformed("not a Shoal publisher key".into()))?;
        let mut bytes = super::unb64(body)?;
        let key = ed25519::Keypair::try_from_bytes(&mut bytes)
            .map_err(|e| AuthError::Malformed(format!("publisher key: {e}")))?;
        Ok(Self { key })
    }

    /// Signs the manifest of the binary whose blake3 digest is `binary`, for `target`.
    pub fn sign(&self, binary: [u8; 32], target: &str, issued: u64) -> Manifest {
        let mut m = Manifest {
            binary,
            target: target.to_string(),
            publisher: self.public(),
            issued,
            signature: Vec::new(),
        };
        m.signature = self.key.sign(&m.body());
        m
    }
}

/// Why a binary from a peer was not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeRejection {
    /// It came without a manifest.
    #[error("the binary is not signed")]
    Unsigned,
    /// Its manifest does not verify, or is not the binary's.
    #[error("its manifest is invalid: {0}")]
    BadManifest(String),
    /// Signed by a publisher this node does not trust.
    #[error("signed by publisher {0}, which this node does not trust")]
    UntrustedPublisher(String),
}

/// Which publishers a node trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodePolicy {
    /// Trusted publisher keys.
    pub trusted: Vec<KeyBytes>,
}

impl CodePolicy {
    /// Whether the binary `binary` for `target`, shipped with `manifest`, may run here.
    pub fn check(
        &self,
        binary: &[u8; 32],
        target: &str,
        manifest: Option<&Manifest>,
    ) -> Result<(), CodeRejection> {
        let m = manifest.ok_or(CodeRejection::Unsigned)?;
        if &m.binary != binary {
            return Err(CodeRejection::BadManifest("it names another binary".into()));
        }
        if m.target != target {
            return Err(CodeRejection::BadManifest(format!(
                "it is for target {}, not {target}",
                m.target
            )));
        }
        super::verify(&m.publisher, &m.body(), &m.signature, "a manifest")
            .map_err(|e| CodeRejection::BadManifest(e.to_string()))?;
        if !self.trusted.contains(&m.publisher) {
            return Err(CodeRejection::UntrustedPublisher(hex(&m.publisher)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "x86_64-unknown-linux-gnu";

    #[test]
    fn an_authority_grant_names_a_publisher_until_it_expires_or_is_revoked() {
        let auth = Authority::generate("m").unwrap();
        let mut trust = auth.trust();
        let p = Publisher::generate();
        let g = auth.grant_publisher(p.public(), 100, 200);
        let g = PublisherGrant::from_text(&g.to_text()).unwrap();
        g.check(&trust, 150).unwrap();
        assert!(matches!(
            g.check(&trust, 201),
            Err(AuthError::Expired { .. })
        ));
        // Edited, or of another mesh's authority, or for another mesh name: refused.
        let mut edited = g.clone();
        edited.expires = u64::MAX;
        assert!(matches!(
            edited.check(&trust, 150),
            Err(AuthError::BadSignature(_))
        ));
        let other = Authority::generate("m").unwrap();
        let theirs = other.grant_publisher(p.public(), 100, 200);
        assert_eq!(theirs.check(&trust, 150), Err(AuthError::WrongAuthority));
        let named = Authority::generate("n").unwrap();
        let mut wrong_mesh = named.trust();
        wrong_mesh.authority = trust.authority;
        assert!(matches!(
            g.check(&wrong_mesh, 150),
            Err(AuthError::WrongMesh { .. })
        ));
        // Revoking the publisher's key ends the grant.
        trust.add_revocation(&auth.revoke(p.public(), 160)).unwrap();
        assert_eq!(g.check(&trust, 170), Err(AuthError::Revoked));
        assert!(PublisherGrant::from_text("shoal-publisher-grant-1-AAAA").is_err());
        assert!(PublisherGrant::from_text("garbage").is_err());
    }

    #[test]
    fn a_trusted_publishers_manifest_admits_its_binary_only() {
        let p = Publisher::generate();
        let again = Publisher::from_text(&p.to_text()).unwrap();
        assert_eq!(again.public(), p.public());
        let bin = *blake3::hash(b"the program").as_bytes();
        let m = p.sign(bin, TARGET, 1_800_000_000);
        let m = Manifest::decode(&m.encode()).unwrap();
        let policy = CodePolicy {
            trusted: vec![p.public()],
        };
        policy.check(&bin, TARGET, Some(&m)).unwrap();
        assert_eq!(
            policy.check(&bin, TARGET, None),
            Err(CodeRejection::Unsigned)
        );
        let other = *blake3::hash(b"another program").as_bytes();
        assert!(matches!(
            policy.check(&other, TARGET, Some(&m)),
            Err(CodeRejection::BadManifest(_))
        ));
        assert!(matches!(
            policy.check(&bin, "aarch64-unknown-linux-gnu", Some(&m)),
            Err(CodeRejection::BadManifest(_))
        ));
        // An unknown publisher, and a manifest edited to name another binary.
        let stranger = Publisher::generate();
        let sm = stranger.sign(bin, TARGET, 1);
        assert!(matches!(
            policy.check(&bin, TARGET, Some(&sm)),
            Err(CodeRejection::UntrustedPublisher(_))
        ));
        let mut edited = m.clone();
        edited.binary = other;
        assert!(matches!(
            policy.check(&other, TARGET, Some(&edited)),
            Err(CodeRejection::BadManifest(_))
        ));
        assert!(Manifest::decode(b"garbage").is_err());
        assert!(Publisher::from_text("shoal-publisher-1-AAAA").is_err());
    }
}
