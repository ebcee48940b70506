//! Membership of a mesh: its authority, the certificates it signs, invites, join tokens and
//! revocations. Pure: every check takes the time as a value, nothing here does IO (but
//! [`keyfile`], which reads and makes publisher key files).
//!
//! A mesh is defined by its **authority**, an ed25519 key the operator keeps offline
//! (`shoal mesh init`). A peer proves membership with a **credential**: a chain of one or two
//! [`Certificate`]s ending in its own key (its libp2p peer id is that key):
//!
//! - `[authority → peer]`: the authority certified this peer directly (`shoal mesh invite
//!   --peer ID`);
//! - `[authority → invite key, invite key → peer]`: the authority certified an **invite key**
//!   (`shoal mesh invite` without `--peer`), whose secret travels in the join token; each node
//!   that joins with it certifies its own peer id, for a role no higher and a time no later
//!   than the invite's. One token can thus start many nodes (or embedded drivers, each with a
//!   fresh identity), like a reusable `tailscale up --authkey`; it is a secret.
//!
//! A [`Revocation`] (signed by the authority) names a key: a peer or an invite. It removes
//! every credential whose chain names that key.
//!
//! Signatures cover a domain-separated encoding of the signed fields, so a certificate can
//! never be read as a revocation or a manifest.

use libp2p::identity::{self, ed25519};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_protocol::codec;

pub mod code;
pub mod keyfile;

/// Certificates in a credential at most.
pub const MAX_CHAIN: usize = 2;
/// Bytes of an encoded credential, token or revocation at most.
pub const MAX_ENCODED: usize = 16 * 1024;
/// Longest mesh name.
pub const MAX_MESH_NAME: usize = 64;
/// Prefix of a join token.
pub const TOKEN_PREFIX: &str = "shoal-join-1-";
/// Prefix of a revocation.
pub const REVOCATION_PREFIX: &str = "shoal-revoke-1-";
/// Prefix of an authority key file's contents.
pub const AUTHORITY_PREFIX: &str = "shoal-authority-1-";

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Submits work and reads its results; is never given work.
    Client,
    /// A full peer: computes, stores, and submits.
    Node,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Node => "node",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        match s {
            "client" => Ok(Role::Client),
            "node" => Ok(Role::Node),
            _ => Err(AuthError::Malformed(format!(
                "role {s:?}: expected `node` or `client`"
            ))),
        }
    }
}

/// Why a credential, token or revocation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The bytes are not what they claim to be.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// Signed by another authority (another mesh).
    #[error("signed by another mesh's authority")]
    WrongAuthority,
    /// Made for another mesh name.
    #[error("made for mesh {theirs:?}, not {ours:?}")]
    WrongMesh {
        /// The credential's mesh.
        theirs: String,
        /// This node's.
        ours: String,
    },
    /// The credential names another peer than the one presenting it.
    #[error("issued to another peer")]
    WrongPeer,
    /// Not valid yet.
    #[error("not valid before {not_before} (unix seconds; now {now})")]
    NotYetValid {
        /// Start of validity.
        not_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// Expired.
    #[error("expired at {not_after} (unix seconds; now {now})")]
    Expired {
        /// End of validity.
        not_after: u64,
        /// The time of the check.
        now: u64,
    },
    /// A key of its chain was revoked.
    #[error("revoked")]
    Revoked,
    /// The chain's shape is wrong (an invite that may not delegate, a role above the
    /// invite's, a validity outside the invite's, too long a chain).
    #[error("bad chain: {0}")]
    BadChain(&'static str),
}

/// A key's 32 public bytes.
pub type KeyBytes = [u8; 32];

/// A statement by `issuer` that `subject` is a member of `mesh` with `role` during
/// `[not_before, not_after]` (unix seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The mesh's name.
    pub mesh: String,
    /// The certified key.
    pub subject: KeyBytes,
    /// Its role.
    pub role: Role,
    /// Whether the subject may certify others (an invite key).
    pub delegate: bool,
    /// Valid from (unix seconds).
    pub not_before: u64,
    /// Valid until (unix seconds).
    pub not_after: u64,
    /// The signer's key.
    pub issuer: KeyBytes,
    /// ed25519 signature (64 bytes) over the fields above.
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct CertBody<'a> {
    domain: &'static str,
    mesh: &'a str,
    subject: &'a KeyBytes,
    role: Role,
    delegate: bool,
    not_before: u64,
    not_after: u64,
    issuer: &'a KeyBytes,
}

impl Certificate {
    fn body(&self) -> Vec<u8> {
        signed_bytes(&CertBody {
            domain: "shoal/certificate/1",
            mesh: &self.mesh,
            subject: &self.subject,
            role: self.role,
            delegate: self.delegate,
            not_before: self.not_before,
            not_after: self.not_after,
            issuer: &self.issuer,
        })
    }

    fn verify_signature(&self) -> Result<(), AuthError> {
        verify(&self.issuer, &self.body(), &self.signature, "a certificate")
    }

    fn check_time(&self, now: u64) -> Result<(), AuthError> {
        if now < self.not_before {
            return Err(AuthError::NotYetValid {
                not_before: self.not_before,
                now,
            });
        }
        if now > self.not_after {
            return Err(AuthError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }
}

/// A peer's proof of membership: certificates from the authority's down to the peer's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The chain, the authority's certificate first, the peer's last.
    pub chain: Vec<Certificate>,
}

impl Credential {
    /// The certified peer's key (the last subject).
    pub fn subject(&self) -> Option<&KeyBytes> {
        self.chain.last().map(|c| &c.subject)
    }

    /// When the credential stops being valid: the earliest end in its chain.
    pub fn not_after(&self) -> u64 {
        self.chain.iter().map(|c| c.not_after).min().unwrap_or(0)
    }

    /// Encodes it (for the wire).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("a credential always encodes")
    }

    /// Decodes one, bounded.
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthError> {
        codec::decode(bytes, MAX_ENCODED).map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

/// What a verified credential says about a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// When its credential expires (unix seconds).
    pub not_after: u64,
    /// The keys of its chain (a revocation of any of them removes it).
    pub keys: Vec<KeyBytes>,
}

/// A statement by the authority that `subject` (a peer's or an invite's key) is no member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The mesh's name.
    pub mesh: String,
    /// The revoked key.
    pub subject: KeyBytes,
    /// When it was made (unix seconds).
    pub issued: u64,
    /// The authority's key.
    pub issuer: KeyBytes,
    /// ed25519 signature over the fields above.
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct RevocationBody<'a> {
    domain: &'static str,
    mesh: &'a str,
    subject: &'a KeyBytes,
    issued: u64,
    issuer: &'a KeyBytes,
}

impl Revocation {
    fn body(&self) -> Vec<u8> {
        signed_bytes(&RevocationBody {
            domain: "shoal/revocation/1",
            mesh: &self.mesh,
            subject: &self.subject,
            issued: self.issued,
            issuer: &self.issuer,
        })
    }

    /// The text form `shoal mesh revoke` prints.
    pub fn to_text(&self) -> String {
        format!(
            "{REVOCATION_PREFIX}{}",
            b64(&codec::encode(self).expect("a revocation always encodes"))
        )
    }

    /// Parses the text form.
    pub fn from_text(s: &str) -> Result<Self, AuthError> {
        let body = s.trim().strip_prefix(REVOCATION_PREFIX).ok_or_else(|| {
            AuthError::Malformed(format!("not a revocation (no {REVOCATION_PREFIX})"))
        })?;
        codec::decode(&unb64(body)?, MAX_ENCODED).map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

/// Something the authority says to the whole mesh: what `shoal mesh publish` hands a node,
/// and what the node keeps in its state directory, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// A key is no member any more.
    Revocation(Revocation),
    /// A publisher whose binaries members run.
    Publisher(code::PublisherGrant),
}

impl Statement {
    /// Parses either text form, by its prefix.
    pub fn from_text(s: &str) -> Result<Self, AuthError> {
        let s = s.trim();
        if s.starts_with(code::GRANT_PREFIX) {
            code::PublisherGrant::from_text(s).map(Statement::Publisher)
        } else if s.starts_with(REVOCATION_PREFIX) {
            Revocation::from_text(s).map(Statement::Revocation)
        } else {
            Err(AuthError::Malformed(format!(
                "not a revocation ({REVOCATION_PREFIX}…) or a publisher grant ({}…)",
                code::GRANT_PREFIX
            )))
        }
    }

    /// Its text form.
    pub fn to_text(&self) -> String {
        match self {
            Statement::Revocation(r) => r.to_text(),
            Statement::Publisher(g) => g.to_text(),
        }
    }
}

/// The mesh's authority: the key that signs credentials and revocations. Kept offline.
pub struct Authority {
    mesh: String,
    key: ed25519::Keypair,
}

#[derive(Serialize, Deserialize)]
struct AuthorityFile {
    mesh: String,
    keypair: Vec<u8>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("mesh", &self.mesh)
            .field("key", &hex(&self.public()))
            .finish()
    }
}

impl Authority {
    /// A new authority for mesh `mesh`.
    pub fn generate(mesh: &str) -> Result<Self, AuthError> {
        check_mesh_name(mesh)?;
        Ok(Self {
            mesh: mesh.to_string(),
            key: ed25519::Keypair::generate(),
        })
    }

    /// The mesh's name.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The authority's public key.
    pub fn public(&self) -> KeyBytes {
        self.key.public().to_bytes()
    }

    /// The trust anchor that nodes of this mesh verify against.
    pub fn trust(&self) -> Trust {
        Trust::new(&self.mesh, self.public())
    }

    /// The key file's contents (a secret).
    pub fn to_text(&self) -> String {
        let file = AuthorityFile {
            mesh: self.mesh.clone(),
            keypair: self.key.to_bytes().to_vec(),
        };
        format!(
            "{AUTHORITY_PREFIX}{}\n",
            b64(&codec::encode(&file).expect("an authority always encodes"))
        )
    }

    /// Reads a key file's contents.
    pub fn from_text(s: &str) -> Result<Self, AuthError> {
        let body = s
            .trim()
            .strip_prefix(AUTHORITY_PREFIX)
            .ok_or_else(|| AuthError::Malformed("not a Shoal authority key".into()))?;
        let mut file: AuthorityFile = codec::decode(&unb64(body)?, MAX_ENCODED)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        check_mesh_name(&file.mesh)?;
        let key = ed25519::Keypair::try_from_bytes(&mut file.keypair)
            .map_err(|e| AuthError::Malformed(format!("authority key: {e}")))?;
        Ok(Self {
            mesh: file.mesh,
            key,
        })
    }

    /// Certifies `subject` directly.
    pub fn certify(
        &self,
        subject: KeyBytes,
        role: Role,
        delegate: bool,
        not_before: u64,
        not_after: u64,
    ) -> Certificate {
        sign_cert(
            &self.key, &self.mesh, subject, role, delegate, not_before, not_after,
        )
    }

    /// A credential for the peer whose key is `peer` (`shoal mesh invite --peer`).
    pub fn credential_for(
        &self,
        peer: &PeerId,
        role: Role,
        not_before: u64,
        not_after: u64,
    ) -> Result<Credential, AuthError> {
        let subject = peer_key(peer)?;
        Ok(Credential {
            chain: vec![self.certify(subject, role, false, not_before, not_after)],
        })
    }

    /// A new invite: a key that may certify peers for `role` until `not_after`.
    pub fn invite(&self, role: Role, not_before: u64, not_after: u64) -> Invite {
        let key = ed25519::Keypair::generate();
        let cert = self.certify(key.public().to_bytes(), role, true, not_before, not_after);
        Invite { key, cert }
    }

    /// Revokes `subject` (a peer's or an invite's key).
    pub fn revoke(&self, subject: KeyBytes, issued: u64) -> Revocation {
        let mut r = Revocation {
            mesh: self.mesh.clone(),
            subject,
            issued,
            issuer: self.public(),
            signature: Vec::new(),
        };
        r.signature = self.key.sign(&r.body());
        r
    }
}

/// An invite: a key certified by the authority to certify peers.
#[derive(Clone)]
pub struct Invite {
    key: ed25519::Keypair,
    cert: Certificate,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("key", &hex(&self.cert.subject))
            .field("role", &self.cert.role)
            .field("not_after", &self.cert.not_after)
            .finish()
    }
}

impl Invite {
    /// The invite's public key (what `shoal mesh revoke --invite` names).
    pub fn public(&self) -> KeyBytes {
        self.cert.subject
    }

    /// Its certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// A credential for the peer `peer`, valid from `now` for as long as the invite.
    pub fn credential_for(&self, peer: &PeerId, now: u64) -> Result<Credential, AuthError> {
        let subject = peer_key(peer)?;
        let leaf = sign_cert(
            &self.key,
            &self.cert.mesh,
            subject,
            self.cert.role,
            false,
            now.max(self.cert.not_before),
            self.cert.not_after,
        );
        Ok(Credential {
            chain: vec![self.cert.clone(), leaf],
        })
    }
}

/// What a node joins with: where the mesh is, whom it trusts, and how it proves membership.
/// `shoal node --join` takes its text form.
#[derive(Clone, Debug)]
pub struct JoinToken {
    /// The trust anchor.
    pub trust: Trust,
    /// Peers to bootstrap from (multiaddrs, with `/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// How this node proves membership.
    pub proof: Proof,
}

/// How a joining node proves membership.
#[derive(Clone, Debug)]
pub enum Proof {
    /// A credential for one peer id (the node must hold that identity key).
    Credential(Credential),
    /// An invite: the node certifies its own peer id.
    Invite(Box<Invite>),
}

#[derive(Serialize, Deserialize)]
struct TokenWire {
    mesh: String,
    authority: KeyBytes,
    bootstrap: Vec<String>,
    credential: Option<Credential>,
    invite: Option<(Vec<u8>, Certificate)>,
}

impl JoinToken {
    /// The text form (`shoal-join-1-…`).
    pub fn to_text(&self) -> String {
        let (credential, invite) = match &self.proof {
            Proof::Credential(c) => (Some(c.clone()), None),
            Proof::Invite(i) => (None, Some((i.key.to_bytes().to_vec(), i.cert.clone()))),
        };
        let wire = TokenWire {
            mesh: self.trust.mesh.clone(),
            authority: self.trust.authority,
            bootstrap: self.bootstrap.clone(),
            credential,
            invite,
        };
        format!(
            "{TOKEN_PREFIX}{}",
            b64(&codec::encode(&wire).expect("a token always encodes"))
        )
    }

    /// Parses the text form, checking that its proof is signed by its authority (not that
    /// it is valid now: see [`JoinToken::credential`]).
    pub fn from_text(s: &str) -> Result<Self, AuthError> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| AuthError::Malformed(format!("not a join token (no {TOKEN_PREFIX})")))?;
        let wire: TokenWire = codec::decode(&unb64(body)?, MAX_ENCODED)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        check_mesh_name(&wire.mesh)?;
        let trust = Trust::new(&wire.mesh, wire.authority);
        let proof = match (wire.credential, wire.invite) {
            (Some(c), None) => {
                if c.chain.is_empty() || c.chain.len() > MAX_CHAIN {
                    return Err(AuthError::BadChain(
                        "a credential has one or two certificates",
                    ));
                }
                trust.check_chain_signatures(&c)?;
                Proof::Credential(c)
            }
            (None, Some((mut key, cert))) => {
                let key = ed25519::Keypair::try_from_bytes(&mut key)
                    .map_err(|e| AuthError::Malformed(format!("invite key: {e}")))?;
                if key.public().to_bytes() != cert.subject || !cert.delegate {
                    return Err(AuthError::BadChain(
                        "the invite's key is not its certificate's",
                    ));
                }
                trust.check_issued_by_authority(&cert)?;
                Proof::Invite(Box::new(Invite { key, cert }))
            }
            _ => {
                return Err(AuthError::Malformed(
                    "a token holds a credential or an invite".into(),
                ))
            }
        };
        Ok(Self {
            trust,
            bootstrap: wire.bootstrap,
            proof,
        })
    }

    /// This node's credential, for `peer` (this node's id) at `now`.
    pub fn credential(&self, peer: &PeerId, now: u64) -> Result<Credential, AuthError> {
        self.proof.credential(&self.trust, peer, now)
    }
}

impl Proof {
    /// The credential of `peer` at `now`, verified against `trust`.
    pub fn credential(
        &self,
        trust: &Trust,
        peer: &PeerId,
        now: u64,
    ) -> Result<Credential, AuthError> {
        let cred = match self {
            Proof::Credential(c) => c.clone(),
            Proof::Invite(i) => i.credential_for(peer, now)?,
        };
        trust.verify(&cred, peer, now)?;
        Ok(cred)
    }
}

/// Test authorities (tests and benchmarks only): one real authority per mesh name per
/// process, with a node invite, so that every peer a test starts for a mesh name is a member
/// of that mesh and of no other.
#[cfg(feature = "test-utils")]
pub mod testing {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    /// The authority of test mesh `mesh` in this process (made on first use).
    pub fn authority(mesh: &str) -> std::sync::Arc<Authority> {
        static ALL: OnceLock<Mutex<HashMap<String, std::sync::Arc<Authority>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(mesh.to_string())
            .or_insert_with(|| {
                std::sync::Arc::new(Authority::generate(mesh).expect("a valid test mesh name"))
            })
            .clone()
    }

    /// A join token of test mesh `mesh` (a node invite valid for a day) with no bootstrap
    /// peers.
    pub fn token(mesh: &str) -> JoinToken {
        let auth = authority(mesh);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        JoinToken {
            trust: auth.trust(),
            bootstrap: Vec::new(),
            proof: Proof::Invite(Box::new(auth.invite(
                Role::Node,
                now.saturating_sub(60),
                now + 86_400,
            ))),
        }
    }
}

/// The trust anchor of a mesh and the revocations it knows: verifies credentials.
#[derive(Clone, Debug)]
pub struct Trust {
    /// The mesh's name.
    pub mesh: String,
    /// The authority's public key.
    pub authority: KeyBytes,
    revoked: std::collections::BTreeMap<KeyBytes, u64>,
}

/// Revocations kept at most; more are refused (and logged by the caller).
pub const MAX_REVOCATIONS: usize = 65_536;

impl Trust {
    /// Trusts `authority` for mesh `mesh`.
    pub fn new(mesh: &str, authority: KeyBytes) -> Self {
        Self {
            mesh: mesh.to_string(),
            authority,
            revoked: Default::default(),
        }
    }

    fn check_issued_by_authority(&self, cert: &Certificate) -> Result<(), AuthError> {
        if cert.issuer != self.authority {
            return Err(AuthError::WrongAuthority);
        }
        if cert.mesh != self.mesh {
            return Err(AuthError::WrongMesh {
                theirs: cert.mesh.clone(),
                ours: self.mesh.clone(),
            });
        }
        cert.verify_signature()
    }

    fn check_chain_signatures(&self, cred: &Credential) -> Result<(), AuthError> {
        let mut issuer_cert: Option<&Certificate> = None;
        for cert in &cred.chain {
            match issuer_cert {
                None => self.check_issued_by_authority(cert)?,
                Some(parent) => {
                    if !parent.delegate {
                        return Err(AuthError::BadChain("an issuer that may not certify others"));
                    }
                    if cert.issuer != parent.subject {
                        return Err(AuthError::BadChain(
                            "a certificate not issued by the one before",
                        ));
                    }
                    if cert.mesh != self.mesh {
                        return Err(AuthError::WrongMesh {
                            theirs: cert.mesh.clone(),
                            ours: self.mesh.clone(),
                        });
                    }
                    if cert.role > parent.role {
                        return Err(AuthError::BadChain("a role above the issuer's"));
                    }
                    if cert.not_after > parent.not_after || cert.not_before < parent.not_before {
                        return Err(AuthError::BadChain("a validity outside the issuer's"));
                    }
                    if cert.delegate {
                        return Err(AuthError::BadChain("only the authority makes invites"));
                    }
                    cert.verify_signature()?;
                }
            }
            issuer_cert = Some(cert);
        }
        Ok(())
    }

    /// Verifies that `cred` makes `peer` a member at `now`.
    pub fn verify(&self, cred: &Credential, peer: &PeerId, now: u64) -> Result<Member, AuthError> {
        if cred.chain.is_empty() || cred.chain.len() > MAX_CHAIN {
            return Err(AuthError::BadChain(
                "a credential has one or two certificates",
            ));
        }
        self.check_chain_signatures(cred)?;
        let leaf = cred.chain.last().expect("not empty");
        if leaf.delegate {
            return Err(AuthError::BadChain("an invite is not a peer's credential"));
        }
        if peer_key(peer)? != leaf.subject {
            return Err(AuthError::WrongPeer);
        }
        for cert in &cred.chain {
            cert.check_time(now)?;
            if self.revoked.contains_key(&cert.subject) {
                return Err(AuthError::Revoked);
            }
        }
        Ok(Member {
            role: leaf.role,
            not_after: cred.not_after(),
            keys: cred.chain.iter().map(|c| c.subject).collect(),
        })
    }

    /// Checks `r` and adds it; `Ok(true)` when it is new.
    pub fn add_revocation(&mut self, r: &Revocation) -> Result<bool, AuthError> {
        if r.issuer != self.authority {
            return Err(AuthError::WrongAuthority);
        }
        if r.mesh != self.mesh {
            return Err(AuthError::WrongMesh {
                theirs: r.mesh.clone(),
                ours: self.mesh.clone(),
            });
        }
        if self.revoked.contains_key(&r.subject) {
            // Known already: nothing changes, so nothing needs verifying.
            return Ok(false);
        }
        verify(&r.issuer, &r.body(), &r.signature, "a revocation")?;
        if self.revoked.len() >= MAX_REVOCATIONS {
            return Err(AuthError::Malformed(format!(
                "more than {MAX_REVOCATIONS} revocations: make a new mesh"
            )));
        }
        self.revoked.insert(r.subject, r.issued);
        Ok(true)
    }

    /// Whether `key` is revoked.
    pub fn is_revoked(&self, key: &KeyBytes) -> bool {
        self.revoked.contains_key(key)
    }

    /// How many revocations it holds.
    pub fn revocations(&self) -> usize {
        self.revoked.len()
    }
}

/// The ed25519 key of a peer id (Shoal peers have ed25519 identities).
pub fn peer_key(peer: &PeerId) -> Result<KeyBytes, AuthError> {
    // An ed25519 peer id inlines its public key (identity multihash of the protobuf key).
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return Err(AuthError::Malformed(
            "a peer id that is not an ed25519 key".into(),
        ));
    }
    let public = identity::PublicKey::try_decode_protobuf(mh.digest())
        .map_err(|e| AuthError::Malformed(format!("peer id: {e}")))?;
    let ed = public
        .try_into_ed25519()
        .map_err(|_| AuthError::Malformed("a peer id that is not an ed25519 key".into()))?;
    Ok(ed.to_bytes())
}

/// The peer id of an ed25519 key.
pub fn key_peer(key: &KeyBytes) -> Result<PeerId, AuthError> {
    let ed = ed25519::PublicKey::try_from_bytes(key)
        .map_err(|e| AuthError::Malformed(format!("key: {e}")))?;
    Ok(PeerId::from_public_key(&identity::PublicKey::from(ed)))
}

/// A key in hex.
pub fn hex(key: &KeyBytes) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a key in hex.
pub fn parse_hex_key(s: &str) -> Result<KeyBytes, AuthError> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return Err(AuthError::Malformed("a key is 64 hex digits".into()));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| AuthError::Malformed("a key is 64 hex digits".into()))?;
    }
    Ok(out)
}

fn check_mesh_name(mesh: &str) -> Result<(), AuthError> {
    if mesh.is_empty()
        || mesh.len() > MAX_MESH_NAME
        || !mesh
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(AuthError::Malformed(format!(
            "mesh name {mesh:?}: 1 to {MAX_MESH_NAME} of a-z, A-Z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}

fn sign_cert(
    key: &ed25519::Keypair,
    mesh: &str,
    subject: KeyBytes,
    role: Role,
    delegate: bool,
    not_before: u64,
    not_after: u64,
) -> Certificate {
    let mut c = Certificate {
        mesh: mesh.to_string(),
        subject,
        role,
        delegate,
        not_before,
        not_after,
        issuer: key.public().to_bytes(),
        signature: Vec::new(),
    };
    c.signature = key.sign(&c.body());
    c
}

fn signed_bytes<T: Serialize>(body: &T) -> Vec<u8> {
    codec::encode(body).expect("signed fields always encode")
}

fn verify(issuer: &KeyBytes, body: &[u8], sig: &[u8], what: &'static str) -> Result<(), AuthError> {
    let key =
        ed25519::PublicKey::try_from_bytes(issuer).map_err(|_| AuthError::BadSignature(what))?;
    if sig.len() != 64 || !key.verify(body, sig) {
        return Err(AuthError::BadSignature(what));
    }
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, AuthError> {
    if s.len() > MAX_ENCODED * 2 {
        return Err(AuthError::Malformed("too long".into()));
    }
    data_encoding::BASE64URL_NOPAD
        .decode(s.as_bytes())
        .map_err(|e| AuthError::Malformed(format!("not base64url: {e}")))
}

#[cfg(test)]
mod tests;
