//! The mesh as one peer sees it: a soft-state view of the other peers, and the failure
//! detector that decides when one has left.
//!
//! Pure: the network task feeds it what happened (a connection opened or closed, a ping
//! failed, a load report arrived) with the current time, and calls [`Membership::tick`]
//! periodically; it answers with joins and leaves. Nothing here does I/O, so it is tested
//! with plain values and made-up instants.
//!
//! A peer leaves the view when
//! - its last connection to us closed and nothing was heard from it for
//!   [`MembershipConfig::grace`] after that (a SIGKILLed peer's connections close at once, so
//!   it is gone within the grace), or
//! - nothing was heard from it for [`MembershipConfig::expiry`]: no report, and no answered
//!   ping (peers we have no connection to are only heard through gossip; a connected peer
//!   whose pings fail is not heard either).
//!
//! A peer that restarts (a report with a later start time) is taken as the same peer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_protocol::mesh::LoadReport;

/// Timings of the failure detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// A peer not heard from for this long has left.
    pub expiry: Duration,
    /// A peer whose connections closed has left if it is not heard from within this.
    pub grace: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            expiry: Duration::from_secs(3),
            grace: Duration::from_millis(1000),
        }
    }
}

/// What the view knows of one peer.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its latest report, once one arrived.
    pub report: Option<LoadReport>,
    /// When it was last heard from (report, connection, ping).
    pub last_heard: Instant,
    /// Whether a connection to it is open.
    pub connected: bool,
    /// Since when it looks gone (connections closed, ping failed), if it does.
    pub suspect_since: Option<Instant>,
    /// Round-trip time of the last ping.
    pub rtt: Option<Duration>,
    /// Whether the last ping to it failed.
    pub ping_failing: bool,
    /// Addresses it was seen at.
    pub addrs: Vec<String>,
}

/// Why a peer left the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftBecause {
    /// Its connections closed (or pings failed) and it was not heard from since.
    Disconnected,
    /// Nothing was heard from it for the expiry time.
    Silent,
}

/// A change of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<P> {
    /// A peer entered the view.
    Joined(P),
    /// A peer restarted (same id, a new run).
    Restarted(P),
    /// A peer left it.
    Left(P, LeftBecause),
}

/// The soft-state view of the other peers of one mesh.
#[derive(Debug)]
pub struct Membership<P: Ord> {
    config: MembershipConfig,
    peers: BTreeMap<P, Member>,
}

impl<P: Ord + Clone> Membership<P> {
    /// An empty view.
    pub fn new(config: MembershipConfig) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// The timings.
    pub fn config(&self) -> MembershipConfig {
        self.config
    }

    /// The peers in the view.
    pub fn peers(&self) -> impl Iterator<Item = (&P, &Member)> {
        self.peers.iter()
    }

    /// One peer.
    pub fn get(&self, peer: &P) -> Option<&Member> {
        self.peers.get(peer)
    }

    /// Peers in the view.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn heard(&mut self, peer: &P, now: Instant) -> Option<Change<P>> {
        match self.peers.get_mut(peer) {
            Some(m) => {
                m.last_heard = now;
                m.suspect_since = None;
                None
            }
            None => {
                self.peers.insert(
                    peer.clone(),
                    Member {
                        report: None,
                        last_heard: now,
                        connected: false,
                        suspect_since: None,
                        rtt: None,
                        ping_failing: false,
                        addrs: Vec::new(),
                    },
                );
                Some(Change::Joined(peer.clone()))
            }
        }
    }

    /// A connection to `peer` (known to be of this mesh) is open, at `addr`.
    pub fn connected(&mut self, peer: &P, addr: Option<String>, now: Instant) -> Option<Change<P>> {
        let change = self.heard(peer, now);
        if let Some(m) = self.peers.get_mut(peer) {
            m.connected = true;
            m.suspect_since = None;
            if let Some(a) = addr {
                if !m.addrs.contains(&a) && m.addrs.len() < 8 {
                    m.addrs.push(a);
                }
            }
        }
        change
    }

    /// The last connection to `peer` closed.
    pub fn disconnected(&mut self, peer: &P, now: Instant) {
        if let Some(m) = self.peers.get_mut(peer) {
            m.connected = false;
            m.suspect_since.get_or_insert(now);
        }
    }

    /// A ping to `peer` answered in `rtt`.
    pub fn ping_ok(&mut self, peer: &P, rtt: Duration, now: Instant) {
        if let Some(m) = self.peers.get_mut(peer) {
            m.rtt = Some(rtt);
            m.ping_failing = false;
            m.last_heard = now;
        }
    }

    /// A ping to `peer` failed: it no longer counts as heard from through pings, so unless
    /// its reports keep coming it expires. (A slow peer is not dropped at the first missed
    /// ping: only a closed connection takes the short grace.)
    pub fn ping_failed(&mut self, peer: &P) {
        if let Some(m) = self.peers.get_mut(peer) {
            m.ping_failing = true;
        }
    }

    /// A validated report from `peer`. A report not newer than the last one of the same run
    /// is ignored (`None`, and the view is unchanged).
    pub fn report(&mut self, peer: &P, report: LoadReport, now: Instant) -> Option<Change<P>> {
        let mut restarted = false;
        if let Some(old) = self.peers.get(peer).and_then(|m| m.report.as_ref()) {
            match report.started_ms.cmp(&old.started_ms) {
                std::cmp::Ordering::Less => return None,
                std::cmp::Ordering::Equal if report.seq <= old.seq => return None,
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => restarted = true,
            }
        }
        let change = self.heard(peer, now);
        if let Some(m) = self.peers.get_mut(peer) {
            m.report = Some(report);
        }
        match change {
            Some(c) => Some(c),
            None if restarted => Some(Change::Restarted(peer.clone())),
            None => None,
        }
    }

    /// Removes `peer` at once (its membership was revoked or expired); whether it was known.
    pub fn remove(&mut self, peer: &P) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// Removes the peers that have left by `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Change<P>> {
        let (expiry, grace) = (self.config.expiry, self.config.grace);
        let mut left = Vec::new();
        self.peers.retain(|p, m| {
            let because = if !m.connected
                && m.suspect_since
                    .is_some_and(|s| now.saturating_duration_since(s) >= grace && m.last_heard <= s)
            {
                Some(LeftBecause::Disconnected)
            } else if now.saturating_duration_since(m.last_heard) >= expiry {
                Some(LeftBecause::Silent)
            } else {
                None
            };
            match because {
                Some(b) => {
                    left.push(Change::Left(p.clone(), b));
                    false
                }
                None => true,
            }
        });
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::ResourceSet;

    fn report(seq: u64, started_ms: u64) -> LoadReport {
        LoadReport {
            peer: vec![1],
            mesh: "m".into(),
            seq,
            started_ms,
            total: ResourceSet::cpus(1.0),
            free: ResourceSet::cpus(1.0),
            queued: 0,
            running: 0,
            store_capacity: 1,
            store_used: 0,
            target: String::new(),
            binaries: vec![],
            addrs: vec![],
            accepts_code: true,
            labels: Vec::new(),
        }
    }

    fn view() -> Membership<&'static str> {
        Membership::new(MembershipConfig {
            expiry: Duration::from_secs(3),
            grace: Duration::from_secs(1),
        })
    }

    #[test]
    fn a_killed_peer_leaves_within_the_grace() {
        let t0 = Instant::now();
        let mut v = view();
        assert_eq!(
            v.connected(&"a", Some("/ip4/1".into()), t0),
            Some(Change::Joined("a"))
        );
        assert_eq!(v.report(&"a", report(1, 10), t0), None);
        v.disconnected(&"a", t0 + Duration::from_millis(100));
        assert!(v.tick(t0 + Duration::from_millis(900)).is_empty());
        assert_eq!(
            v.tick(t0 + Duration::from_millis(1100)),
            vec![Change::Left("a", LeftBecause::Disconnected)]
        );
        assert!(v.is_empty());
    }

    #[test]
    fn a_peer_heard_through_gossip_after_its_connection_closed_stays() {
        let t0 = Instant::now();
        let mut v = view();
        v.connected(&"a", None, t0);
        v.disconnected(&"a", t0);
        v.report(&"a", report(2, 10), t0 + Duration::from_millis(500));
        assert!(v.tick(t0 + Duration::from_millis(1500)).is_empty());
        // Then silence: it expires.
        assert_eq!(
            v.tick(t0 + Duration::from_millis(3500)),
            vec![Change::Left("a", LeftBecause::Silent)]
        );
    }

    #[test]
    fn silent_peers_expire_and_stale_reports_are_ignored() {
        let t0 = Instant::now();
        let mut v = view();
        assert_eq!(v.report(&"b", report(5, 10), t0), Some(Change::Joined("b")));
        // A replayed or reordered report does not count as hearing from it.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(v.report(&"b", report(5, 10), t1), None);
        assert_eq!(v.report(&"b", report(4, 10), t1), None);
        assert_eq!(
            v.tick(t0 + Duration::from_secs(3)),
            vec![Change::Left("b", LeftBecause::Silent)]
        );
    }

    #[test]
    fn a_restarted_peer_is_the_same_peer_again() {
        let t0 = Instant::now();
        let mut v = view();
        v.report(&"c", report(100, 10), t0);
        // A new run starts its sequence again.
        assert_eq!(
            v.report(&"c", report(1, 20), t0),
            Some(Change::Restarted("c"))
        );
        assert_eq!(v.get(&"c").unwrap().report.as_ref().unwrap().seq, 1);
        // After it left, it joins again.
        v.tick(t0 + Duration::from_secs(10));
        assert_eq!(
            v.report(&"c", report(2, 20), t0 + Duration::from_secs(11)),
            Some(Change::Joined("c"))
        );
    }

    #[test]
    fn a_connected_peer_whose_pings_fail_and_reports_stop_expires() {
        let t0 = Instant::now();
        let mut v = view();
        v.connected(&"d", None, t0);
        v.ping_ok(
            &"d",
            Duration::from_micros(80),
            t0 + Duration::from_millis(200),
        );
        assert_eq!(v.get(&"d").unwrap().rtt, Some(Duration::from_micros(80)));
        // A failed ping alone (an overloaded peer) does not take the short grace.
        v.ping_failed(&"d");
        assert!(v.get(&"d").unwrap().ping_failing);
        assert!(v.tick(t0 + Duration::from_millis(2000)).is_empty());
        // Still nothing heard: the expiry takes it.
        assert_eq!(
            v.tick(t0 + Duration::from_millis(3200)),
            vec![Change::Left("d", LeftBecause::Silent)]
        );
    }
}
