//! Admission: a connection reaches the swarm only once both ends proved membership of the
//! mesh.
//!
//! libp2p gives a connection its protocol handlers when it is established, before any
//! credential could be exchanged on it. So the check happens earlier, inside the transport:
//! after Noise has authenticated the remote peer id, and before the multiplexer starts, both
//! ends exchange an [`AdmitHello`] (their [`Credential`] and the revocations they know) on the
//! encrypted channel, verify the other's against the mesh's [`Trust`], and exchange a
//! [`Verdict`]. Only when both welcome each other does Yamux start and the swarm see the
//! connection; otherwise the connection fails as a transport error and is closed. A peer that
//! cannot prove membership therefore never reaches gossip, the DHT, identify, RPC or any
//! stream: no behaviour ever has a handler for it. QUIC (which has its own security and
//! multiplexing) does the same exchange on the connection's first stream before the swarm
//! gets it.
//!
//! The same [`Gate`] later drops members whose credential expires or is revoked (the network
//! task asks it on every tick and on every revocation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_protocol::{codec, frame};

use crate::auth::code::PublisherGrant;
use crate::auth::{AuthError, Credential, KeyBytes, Member, Revocation, Trust};

/// The name negotiated for "admission, then Yamux" on a TCP (or memory) connection.
pub const PROTOCOL: &str = "/shoal/admit+yamux/1";
/// Bytes of one admission message at most.
pub const MAX_HELLO: usize = 256 * 1024;
/// Revocations sent in one hello at most (the newest; gossip carries the rest).
pub const MAX_HELLO_REVOCATIONS: usize = 1024;
/// Publisher grants a node keeps (and sends in its hello) at most.
pub const MAX_GRANTS: usize = 256;
/// Time the whole exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// A refusal of the same peer is logged once per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// Peers whose last refusal is remembered (for rate-limiting the log) at most.
const LOG_MEMORY: usize = 4096;

/// What each end sends first.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdmitHello {
    /// The sender's proof of membership.
    pub credential: Credential,
    /// Revocations the sender knows (at most [`MAX_HELLO_REVOCATIONS`]).
    pub revocations: Vec<Revocation>,
    /// Publishers the authority named that the sender knows (at most [`MAX_GRANTS`]).
    pub publishers: Vec<PublisherGrant>,
}

/// What each end answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Verdict {
    /// The other end is a member.
    Welcome,
    /// It is not, and why.
    Refused(String),
}

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// This end refused the other.
    #[error("refused {peer}: {reason}")]
    Refused {
        /// The other end.
        peer: PeerId,
        /// Why.
        reason: Box<AuthError>,
    },
    /// The other end refused this one.
    #[error("refused by {peer}: {reason}")]
    RefusedBy {
        /// The other end.
        peer: PeerId,
        /// What it said.
        reason: String,
    },
    /// The exchange failed (IO, a malformed message, the time limit).
    #[error("admission exchange with {peer} failed: {message}")]
    Exchange {
        /// The other end.
        peer: PeerId,
        /// What went wrong.
        message: String,
    },
    /// The multiplexer that follows failed.
    #[error("after admission: {0}")]
    Muxer(String),
}

/// The seconds of the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Admission's state, shared by every connection's upgrade and the network task.
pub struct Gate {
    state: Mutex<GateState>,
}

struct GateState {
    trust: Trust,
    own: Credential,
    /// Every revocation known, for relaying (newest last).
    revocations: Vec<Revocation>,
    /// Publisher grants known (checked when added), for relaying and for code checks.
    publishers: Vec<PublisherGrant>,
    /// Peers admitted, with what their credential says.
    members: HashMap<PeerId, Member>,
    /// Peers dropped because their credential expired, with its end: their relayed
    /// messages are ignored until they come back with a renewed one.
    expired: HashMap<PeerId, u64>,
    /// When each refused peer was last logged.
    logged: HashMap<PeerId, Instant>,
    refused: u64,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl Gate {
    /// A gate of the mesh `trust` anchors, presenting `own`.
    pub fn new(trust: Trust, own: Credential) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                trust,
                own,
                revocations: Vec::new(),
                publishers: Vec::new(),
                members: HashMap::new(),
                expired: HashMap::new(),
                logged: HashMap::new(),
                refused: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mesh's name.
    pub fn mesh(&self) -> String {
        self.lock().trust.mesh.clone()
    }

    /// What a member `peer` is, if admitted.
    pub fn member(&self, peer: &PeerId) -> Option<Member> {
        self.lock().members.get(peer).cloned()
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// This node's own credential.
    pub fn own(&self) -> Credential {
        self.lock().own.clone()
    }

    /// Replaces this node's credential (a renewal), once it verifies for `me` now.
    pub fn renew(&self, me: &PeerId, cred: Credential) -> Result<Member, AuthError> {
        let mut s = self.lock();
        let member = s.trust.verify(&cred, me, unix_now())?;
        s.own = cred;
        Ok(member)
    }

    /// A member's renewed credential (from gossip): adopted when it verifies for `peer`.
    pub fn renewed(&self, peer: &PeerId, cred: &Credential) -> Result<Member, AuthError> {
        let mut s = self.lock();
        let member = s.trust.verify(cred, peer, unix_now())?;
        s.members.insert(*peer, member.clone());
        s.expired.remove(peer);
        Ok(member)
    }

    /// Adds a revocation; returns whether it is new, and the members it removes (to be
    /// disconnected).
    pub fn revoke(&self, r: &Revocation) -> Result<(bool, Vec<PeerId>), AuthError> {
        let mut s = self.lock();
        if !s.trust.add_revocation(r)? {
            return Ok((false, Vec::new()));
        }
        s.revocations.push(r.clone());
        let gone: Vec<PeerId> = s
            .members
            .iter()
            .filter(|(_, m)| m.keys.contains(&r.subject))
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            s.members.remove(p);
        }
        Ok((true, gone))
    }

    /// Adds a publisher grant once it checks out; `Ok(true)` when it is new.
    pub fn grant_publisher(&self, g: &PublisherGrant) -> Result<bool, AuthError> {
        let mut s = self.lock();
        if s.publishers.contains(g) {
            return Ok(false);
        }
        g.check(&s.trust, unix_now())?;
        let now = unix_now();
        // Expired ones make room.
        s.publishers.retain(|old| old.expires >= now);
        if s.publishers.len() >= MAX_GRANTS {
            return Err(AuthError::Malformed(format!(
                "more than {MAX_GRANTS} publisher grants"
            )));
        }
        s.publishers.push(g.clone());
        Ok(true)
    }

    /// The publishers the authority names now (grants not expired, keys not revoked).
    pub fn granted_publishers(&self) -> Vec<KeyBytes> {
        let s = self.lock();
        let now = unix_now();
        s.publishers
            .iter()
            .filter(|g| g.expires >= now && !s.trust.is_revoked(&g.publisher))
            .map(|g| g.publisher)
            .collect()
    }

    /// Members whose credential has expired at `now`: forgotten, to be disconnected.
    pub fn expired(&self, now: u64) -> Vec<PeerId> {
        let mut s = self.lock();
        let gone: Vec<PeerId> = s
            .members
            .iter()
            .filter(|(_, m)| m.not_after < now)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            if let Some(m) = s.members.remove(p) {
                s.expired.insert(*p, m.not_after);
            }
        }
        // Remembered for a day at most (then its own credential is long expired anyway).
        s.expired.retain(|_, end| end.saturating_add(86_400) > now);
        gone
    }

    /// Forgets a peer whose last connection closed.
    pub fn forget(&self, peer: &PeerId) {
        self.lock().members.remove(peer);
    }

    /// Whether `peer` was put out of the mesh: its own key revoked, or dropped when its
    /// credential expired (its relayed messages are then ignored).
    pub fn is_expelled(&self, peer: &PeerId) -> bool {
        let s = self.lock();
        s.expired.contains_key(peer)
            || crate::auth::peer_key(peer).is_ok_and(|k| s.trust.is_revoked(&k))
    }

    fn hello(&self) -> AdmitHello {
        let s = self.lock();
        let skip = s.revocations.len().saturating_sub(MAX_HELLO_REVOCATIONS);
        AdmitHello {
            credential: s.own.clone(),
            revocations: s.revocations[skip..].to_vec(),
            publishers: s.publishers.clone(),
        }
    }

    /// Checks the other end's hello: adopts the revocations it carries (each is checked),
    /// then verifies its credential.
    fn judge(&self, peer: &PeerId, hello: &AdmitHello) -> Result<Member, AuthError> {
        for r in hello.revocations.iter().take(MAX_HELLO_REVOCATIONS) {
            match self.revoke(r) {
                Ok(_) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "a relayed revocation was refused"),
            }
        }
        for g in hello.publishers.iter().take(MAX_GRANTS) {
            if let Err(e) = self.grant_publisher(g) {
                tracing::debug!(%peer, error = %e, "a relayed publisher grant was refused");
            }
        }
        let mut s = self.lock();
        let member = s.trust.verify(&hello.credential, peer, unix_now())?;
        s.members.insert(*peer, member.clone());
        s.expired.remove(peer);
        Ok(member)
    }

    /// Logs a refusal at most once per [`LOG_EVERY`] per peer, and counts it.
    fn refusal(&self, peer: &PeerId, what: &AdmitError) {
        let now = Instant::now();
        let log = {
            let mut s = self.lock();
            s.refused += 1;
            if s.logged.len() >= LOG_MEMORY {
                s.logged.retain(|_, t| now.duration_since(*t) < LOG_EVERY);
                if s.logged.len() >= LOG_MEMORY {
                    s.logged.clear();
                }
            }
            match s.logged.get(peer) {
                Some(t) if now.duration_since(*t) < LOG_EVERY => false,
                _ => {
                    s.logged.insert(*peer, now);
                    true
                }
            }
        };
        if log {
            tracing::warn!(%peer, error = %what, "connection not admitted (logged once a minute per peer)");
        }
    }

    /// Runs the exchange on `io` with `peer` (already authenticated by the transport).
    pub async fn exchange<S>(
        self: &Arc<Self>,
        io: &mut S,
        peer: PeerId,
    ) -> Result<Member, AdmitError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outcome = match tokio::time::timeout(TIMEOUT, self.exchange_inner(io, peer)).await {
            Ok(r) => r,
            Err(_) => Err(AdmitError::Exchange {
                peer,
                message: "no answer within the time limit".into(),
            }),
        };
        if let Err(e) = &outcome {
            if matches!(e, AdmitError::Exchange { .. }) {
                tracing::debug!(%peer, error = %e, "admission exchange failed");
            } else {
                self.refusal(&peer, e);
            }
        }
        outcome
    }

    async fn exchange_inner<S>(&self, io: &mut S, peer: PeerId) -> Result<Member, AdmitError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io_err = |e: std::io::Error| AdmitError::Exchange {
            peer,
            message: e.to_string(),
        };
        write_msg(io, &self.hello()).await.map_err(io_err)?;
        let theirs: AdmitHello = read_msg(io).await.map_err(io_err)?;
        let judged = self.judge(&peer, &theirs);
        let verdict = match &judged {
            Ok(_) => Verdict::Welcome,
            Err(e) => Verdict::Refused(e.to_string()),
        };
        // A peer that refused this one may have closed already: its verdict still says why.
        let wrote = write_msg(io, &verdict).await;
        let member = match judged {
            Ok(m) => m,
            Err(reason) => {
                // Closing is courtesy: the connection fails either way.
                if let Err(e) = io.close().await {
                    tracing::debug!(%peer, error = %e, "closing a refused connection");
                }
                return Err(AdmitError::Refused {
                    peer,
                    reason: Box::new(reason),
                });
            }
        };
        let theirs = read_msg::<_, Verdict>(io).await;
        match (wrote, theirs) {
            (_, Ok(Verdict::Refused(reason))) => {
                self.forget(&peer);
                Err(AdmitError::RefusedBy { peer, reason })
            }
            (Ok(()), Ok(Verdict::Welcome)) => Ok(member),
            (Err(e), _) | (_, Err(e)) => {
                self.forget(&peer);
                Err(io_err(e))
            }
        }
    }
}

async fn write_msg<S, T>(io: &mut S, msg: &T) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut out = Vec::new();
    frame::encode_frame(&mut out, msg, MAX_HELLO)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    io.write_all(&out).await?;
    io.flush().await
}

/// Reads exactly one frame (never past it: what follows belongs to the multiplexer).
async fn read_msg<S, T>(io: &mut S) -> std::io::Result<T>
where
    S: AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    let mut header = [0u8; frame::HEADER_LEN];
    io.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_HELLO {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an admission message of {len} bytes (at most {MAX_HELLO})"),
        ));
    }
    // Grows with what arrives, not with what the header announced.
    let mut payload = Vec::new();
    (&mut *io)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if payload.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    codec::decode(&payload, MAX_HELLO)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// What members tell the whole mesh about membership (gossip on the mesh's admin topic).
#[derive(Debug, Serialize, Deserialize)]
pub enum Notice {
    /// A revocation, signed by the authority (anyone may relay it).
    Revocation(Revocation),
    /// A publisher the authority names (anyone may relay it).
    Publisher(PublisherGrant),
    /// The sender's renewed credential (only valid from the peer it names).
    Credential(Credential),
}

/// Bytes of an encoded notice at most.
pub const MAX_NOTICE: usize = 64 * 1024;

/// Decodes a notice (the fuzz and test entry point).
pub fn decode_notice(bytes: &[u8]) -> Result<Notice, codec::DecodeError> {
    codec::decode(bytes, MAX_NOTICE)
}

/// Decodes an admission hello (the fuzz and test entry point).
pub fn decode_hello(bytes: &[u8]) -> Result<AdmitHello, codec::DecodeError> {
    codec::decode(bytes, MAX_HELLO)
}

/// The upgrade "admission, then `inner`" (`inner` is the multiplexer's upgrade).
#[derive(Clone)]
pub struct Admit<U> {
    inner: U,
    gate: Arc<Gate>,
    peer: PeerId,
}

impl<U> Admit<U> {
    /// Admission of `peer` through `gate`, then `inner`.
    pub fn new(inner: U, gate: Arc<Gate>, peer: PeerId) -> Self {
        Self { inner, gate, peer }
    }
}

impl<U> UpgradeInfo for Admit<U> {
    type Info = &'static str;
    type InfoIter = std::iter::Once<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C, U> InboundConnectionUpgrade<C> for Admit<U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: InboundConnectionUpgrade<C> + Send + 'static,
    U::Future: Send,
    U::Info: Send,
    U::Output: Send,
    U::Error: std::fmt::Display,
{
    type Output = U::Output;
    type Error = AdmitError;
    type Future = BoxFuture<'static, Result<U::Output, AdmitError>>;

    fn upgrade_inbound(self, mut io: C, _: Self::Info) -> Self::Future {
        async move {
            let info = inner_info(&self.inner)?;
            self.gate.exchange(&mut io, self.peer).await?;
            self.inner
                .upgrade_inbound(io, info)
                .await
                .map_err(|e| AdmitError::Muxer(e.to_string()))
        }
        .boxed()
    }
}

impl<C, U> OutboundConnectionUpgrade<C> for Admit<U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: OutboundConnectionUpgrade<C> + Send + 'static,
    U::Future: Send,
    U::Info: Send,
    U::Output: Send,
    U::Error: std::fmt::Display,
{
    type Output = U::Output;
    type Error = AdmitError;
    type Future = BoxFuture<'static, Result<U::Output, AdmitError>>;

    fn upgrade_outbound(self, mut io: C, _: Self::Info) -> Self::Future {
        async move {
            let info = inner_info(&self.inner)?;
            self.gate.exchange(&mut io, self.peer).await?;
            self.inner
                .upgrade_outbound(io, info)
                .await
                .map_err(|e| AdmitError::Muxer(e.to_string()))
        }
        .boxed()
    }
}

fn inner_info<U: UpgradeInfo>(inner: &U) -> Result<U::Info, AdmitError> {
    inner
        .protocol_info()
        .into_iter()
        .next()
        .ok_or_else(|| AdmitError::Muxer("the multiplexer names no protocol".into()))
}

/// Admission on an already multiplexed connection (QUIC): the dialer opens the first stream
/// and both ends run the exchange on it before the swarm gets the connection.
#[cfg(feature = "quic")]
pub async fn admit_muxer<M>(
    gate: Arc<Gate>,
    peer: PeerId,
    dialer: bool,
    mut muxer: M,
) -> Result<(PeerId, M), AdmitError>
where
    M: libp2p::core::muxing::StreamMuxer + Unpin,
    M::Substream: Unpin,
    M::Error: std::fmt::Display,
{
    use libp2p::core::muxing::StreamMuxerExt;
    let opened = if dialer {
        futures::future::poll_fn(|cx| muxer.poll_outbound_unpin(cx)).await
    } else {
        futures::future::poll_fn(|cx| muxer.poll_inbound_unpin(cx)).await
    };
    let mut stream = opened.map_err(|e| AdmitError::Exchange {
        peer,
        message: format!("opening the admission stream: {e}"),
    })?;
    gate.exchange(&mut stream, peer).await?;
    if let Err(e) = stream.close().await {
        tracing::debug!(%peer, error = %e, "closing the admission stream");
    }
    Ok((peer, muxer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authority, Role};
    use libp2p::identity::Keypair;

    fn member_of(auth: &Authority) -> (PeerId, Arc<Gate>) {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let now = unix_now();
        let cred = auth
            .credential_for(&peer, Role::Node, now - 10, now + 3600)
            .unwrap();
        (peer, Gate::new(auth.trust(), cred))
    }

    async fn run(
        a: (PeerId, Arc<Gate>),
        b: (PeerId, Arc<Gate>),
    ) -> (Result<Member, AdmitError>, Result<Member, AdmitError>) {
        let (mut x, mut y) = tokio::io::duplex(64 * 1024);
        let (ga, gb) = (a.1.clone(), b.1.clone());
        let (pa, pb) = (a.0, b.0);
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let left = tokio::spawn(async move {
            let mut io = (&mut x).compat();
            ga.exchange(&mut io, pb).await
        });
        let mut io = (&mut y).compat();
        let right = gb.exchange(&mut io, pa).await;
        (left.await.unwrap(), right)
    }

    #[tokio::test]
    async fn members_admit_each_other_and_strangers_are_refused_both_ways() {
        let auth = Authority::generate("lab").unwrap();
        let a = member_of(&auth);
        let b = member_of(&auth);
        let (ra, rb) = run(a.clone(), b.clone()).await;
        assert_eq!(ra.unwrap().role, Role::Node);
        assert_eq!(rb.unwrap().role, Role::Node);
        assert!(a.1.member(&b.0).is_some() && b.1.member(&a.0).is_some());

        let other = Authority::generate("lab").unwrap();
        let c = member_of(&other);
        let (ra, rc) = run(a.clone(), c.clone()).await;
        assert!(
            matches!(&ra, Err(AdmitError::Refused { reason, .. }) if **reason == AuthError::WrongAuthority),
            "{ra:?}"
        );
        assert!(
            matches!(
                rc,
                Err(AdmitError::Refused { .. }) | Err(AdmitError::RefusedBy { .. })
            ),
            "{rc:?}"
        );
        assert!(a.1.member(&c.0).is_none());
        assert_eq!(a.1.refused(), 1);
    }

    #[tokio::test]
    async fn revocations_travel_in_the_hello_and_remove_members() {
        let auth = Authority::generate("lab").unwrap();
        let a = member_of(&auth);
        let b = member_of(&auth);
        let c = member_of(&auth);
        let r = auth.revoke(crate::auth::peer_key(&c.0).unwrap(), unix_now());
        assert_eq!(a.1.revoke(&r).unwrap(), (true, vec![]));
        // b learns the revocation from a's hello, then refuses c.
        let (ra, rb) = run(a.clone(), b.clone()).await;
        ra.unwrap();
        rb.unwrap();
        let (rb, rc) = run(b.clone(), c.clone()).await;
        assert!(
            matches!(&rb, Err(AdmitError::Refused { reason, .. }) if **reason == AuthError::Revoked),
            "{rb:?}"
        );
        assert!(rc.is_err());
        // A revocation of a member already admitted names it for disconnection.
        let r = auth.revoke(crate::auth::peer_key(&b.0).unwrap(), unix_now());
        assert_eq!(a.1.revoke(&r).unwrap(), (true, vec![b.0]));
        assert!(a.1.member(&b.0).is_none());
    }

    #[tokio::test]
    async fn publisher_grants_travel_in_the_hello_until_the_publisher_is_revoked() {
        let auth = Authority::generate("lab").unwrap();
        let (a, b) = (member_of(&auth), member_of(&auth));
        let publisher = crate::auth::code::Publisher::generate().public();
        let now = unix_now();
        let grant = auth.grant_publisher(publisher, now, now + 3600);
        assert!(a.1.grant_publisher(&grant).unwrap());
        assert!(!a.1.grant_publisher(&grant).unwrap(), "known already");
        // Another mesh's authority names nobody here; an expired grant neither.
        let stranger = Authority::generate("lab").unwrap();
        let theirs = stranger.grant_publisher(publisher, now, now + 3600);
        assert_eq!(a.1.grant_publisher(&theirs), Err(AuthError::WrongAuthority));
        let old = auth.grant_publisher([9; 32], now - 7200, now - 3600);
        assert!(matches!(
            a.1.grant_publisher(&old),
            Err(AuthError::Expired { .. })
        ));
        // b learns it from a's hello.
        assert!(b.1.granted_publishers().is_empty());
        let (ra, rb) = run(a.clone(), b.clone()).await;
        ra.unwrap();
        rb.unwrap();
        assert_eq!(b.1.granted_publishers(), vec![publisher]);
        // Revoking the publisher's key ends the grant everywhere the revocation goes.
        b.1.revoke(&auth.revoke(publisher, now)).unwrap();
        assert!(b.1.granted_publishers().is_empty());
        assert_eq!(a.1.granted_publishers(), vec![publisher]);
    }

    #[tokio::test]
    async fn a_header_announcing_a_huge_hello_is_refused_without_allocating_it() {
        let (mut x, y) = tokio::io::duplex(1024);
        use tokio::io::AsyncWriteExt as _;
        use tokio_util::compat::TokioAsyncReadCompatExt;
        x.write_all(&(u32::MAX).to_le_bytes()).await.unwrap();
        let mut io = y.compat();
        let e = read_msg::<_, AdmitHello>(&mut io).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
