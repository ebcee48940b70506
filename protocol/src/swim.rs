//! What peers' membership (SWIM with Lifeguard, the node's `core::swim`) tells each other, as
//! it travels: one [`SwimWire`] per stream. Peer ids travel as their bytes and addresses as
//! multiaddr bytes; the network layer checks both and maps them to the core's names.
//!
//! [`SwimWire::validate`] bounds everything a peer can make this node hold or do: the number
//! of updates, buckets and addresses, and the length of every name.

use serde::{Deserialize, Serialize};

use crate::mesh::{LoadReport, MAX_PEER_KEY};

/// Bytes of one encoded [`SwimWire`] at most.
pub const MAX_SWIM_BYTES: usize = 128 * 1024;
/// Updates (or entries) in one message at most.
pub const MAX_SWIM_UPDATES: usize = 256;
/// Digest buckets in one message at most.
pub const MAX_SWIM_BUCKETS: usize = 256;
/// Addresses given for one peer at most.
pub const MAX_SWIM_ADDRS: usize = 4;
/// Longest address, in bytes.
pub const MAX_SWIM_ADDR: usize = 128;

/// What one peer believes of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimHealth {
    /// Answering.
    Alive,
    /// Did not answer a probe.
    Suspect,
    /// Declared dead.
    Dead,
    /// Left of its own accord.
    Left,
}

/// News of one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwimUpdate {
    /// Its peer id's bytes.
    pub peer: Vec<u8>,
    /// The member's incarnation this is about.
    pub incarnation: u64,
    /// What is believed.
    pub health: SwimHealth,
    /// Who suspects it (for [`SwimHealth::Suspect`]).
    pub by: Option<Vec<u8>>,
    /// Where it listens, as the sender knows (multiaddr bytes; none for a peer that is down).
    pub addrs: Vec<Vec<u8>>,
}

/// One membership message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimWire {
    /// Are you there?
    Ping {
        /// Matches the ack.
        seq: u32,
        /// Piggybacked updates.
        updates: Vec<SwimUpdate>,
        /// The sender's own load, piggybacked (meshes that sample loads; see
        /// [`SwimWire::Load`]).
        load: Option<Box<LoadReport>>,
    },
    /// Please ping `target` for me.
    PingReq {
        /// The asker's sequence number.
        seq: u32,
        /// Whom to ping (peer id bytes).
        target: Vec<u8>,
        /// Where it listens, as the asker knows.
        target_addrs: Vec<Vec<u8>>,
        /// Piggybacked updates.
        updates: Vec<SwimUpdate>,
    },
    /// Here I am (or: the target answered the helper).
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// Piggybacked updates.
        updates: Vec<SwimUpdate>,
        /// The sender's own load, piggybacked.
        load: Option<Box<LoadReport>>,
    },
    /// The target did not answer the helper.
    Nack {
        /// The ping request's sequence number.
        seq: u32,
    },
    /// Updates pushed while any are queued.
    Gossip {
        /// The updates.
        updates: Vec<SwimUpdate>,
    },
    /// The sender's view as bucket hashes.
    Digest {
        /// One hash per bucket.
        buckets: Vec<u64>,
        /// A joining peer's digest.
        join: bool,
    },
    /// Entries of the buckets that differed, and the buckets wanted back.
    Entries {
        /// The entries.
        entries: Vec<SwimUpdate>,
        /// Buckets whose entries the receiver should send back.
        want: Vec<u16>,
    },
    /// What is your load now? (A peer about to spill samples a few members.) Answered
    /// with [`SwimWire::Load`].
    LoadAsk,
    /// The sender's own load: an answer to [`SwimWire::LoadAsk`]. Loads travel only first
    /// hand, so the receiver checks that the report is the sender's.
    Load {
        /// The report.
        report: Box<LoadReport>,
    },
}

/// Why a membership message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwimWireError {
    /// More updates, buckets or wanted buckets than allowed.
    #[error("too many {what}: {len} (at most {max})")]
    TooMany {
        /// Of what.
        what: &'static str,
        /// How many came.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A peer id that is empty or too long.
    #[error("a peer id of {0} bytes")]
    PeerId(usize),
    /// An address that is empty or too long.
    #[error("an address of {0} bytes")]
    Addr(usize),
}

fn check_peer(p: &[u8]) -> Result<(), SwimWireError> {
    if p.is_empty() || p.len() > MAX_PEER_KEY {
        return Err(SwimWireError::PeerId(p.len()));
    }
    Ok(())
}

fn check_count(what: &'static str, len: usize, max: usize) -> Result<(), SwimWireError> {
    if len > max {
        return Err(SwimWireError::TooMany { what, len, max });
    }
    Ok(())
}

fn check_addrs(addrs: &[Vec<u8>]) -> Result<(), SwimWireError> {
    check_count("addresses", addrs.len(), MAX_SWIM_ADDRS)?;
    match addrs
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_SWIM_ADDR)
    {
        Some(a) => Err(SwimWireError::Addr(a.len())),
        None => Ok(()),
    }
}

fn check_updates(updates: &[SwimUpdate]) -> Result<(), SwimWireError> {
    check_count("updates", updates.len(), MAX_SWIM_UPDATES)?;
    for u in updates {
        check_peer(&u.peer)?;
        if let Some(by) = &u.by {
            check_peer(by)?;
        }
        check_addrs(&u.addrs)?;
    }
    Ok(())
}

impl SwimWire {
    /// Checks every bound of the message.
    pub fn validate(&self) -> Result<(), SwimWireError> {
        match self {
            SwimWire::Ping { updates, .. }
            | SwimWire::Ack { updates, .. }
            | SwimWire::Gossip { updates } => check_updates(updates),
            // A load's own bounds depend on who sent it (`LoadReport::validate`).
            SwimWire::LoadAsk | SwimWire::Load { .. } => Ok(()),
            SwimWire::PingReq {
                target,
                target_addrs,
                updates,
                ..
            } => {
                check_peer(target)?;
                check_addrs(target_addrs)?;
                check_updates(updates)
            }
            SwimWire::Nack { .. } => Ok(()),
            SwimWire::Digest { buckets, .. } => {
                check_count("buckets", buckets.len(), MAX_SWIM_BUCKETS)
            }
            SwimWire::Entries { entries, want } => {
                check_count("wanted buckets", want.len(), MAX_SWIM_BUCKETS)?;
                check_updates(entries)
            }
        }
    }

    /// What kind of message it is, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            SwimWire::Ping { .. } => "ping",
            SwimWire::PingReq { .. } => "ping-req",
            SwimWire::Ack { .. } => "ack",
            SwimWire::Nack { .. } => "nack",
            SwimWire::Gossip { .. } => "gossip",
            SwimWire::Digest { .. } => "digest",
            SwimWire::Entries { .. } => "entries",
            SwimWire::LoadAsk => "load-ask",
            SwimWire::Load { .. } => "load",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn update(peer: u8, addrs: usize) -> SwimUpdate {
        SwimUpdate {
            peer: vec![peer; 38],
            incarnation: 7,
            health: SwimHealth::Suspect,
            by: Some(vec![9; 38]),
            addrs: (0..addrs).map(|i| vec![4, 127, 0, 0, i as u8]).collect(),
        }
    }

    #[test]
    fn the_largest_valid_message_fits_and_round_trips() {
        let big = SwimWire::Entries {
            entries: (0..MAX_SWIM_UPDATES)
                .map(|i| SwimUpdate {
                    addrs: vec![vec![0xab; MAX_SWIM_ADDR]; MAX_SWIM_ADDRS],
                    ..update(i as u8, 0)
                })
                .collect(),
            want: (0..MAX_SWIM_BUCKETS as u16).collect(),
        };
        big.validate().unwrap();
        let bytes = codec::encode(&big).unwrap();
        // The worst case is far over what real addresses take, and still bounded.
        assert!(bytes.len() < 4 * MAX_SWIM_BYTES, "{}", bytes.len());
        let back: SwimWire = codec::decode(&bytes, 4 * MAX_SWIM_BYTES).unwrap();
        assert_eq!(back, big);
        // A realistic full message (ids of 38 bytes, two short addresses) fits the bound.
        let real = SwimWire::Gossip {
            updates: (0..MAX_SWIM_UPDATES)
                .map(|i| SwimUpdate {
                    addrs: vec![vec![0xab; 30]; 2],
                    ..update(i as u8, 0)
                })
                .collect(),
        };
        assert!(codec::encode(&real).unwrap().len() <= MAX_SWIM_BYTES);
    }

    #[test]
    fn every_bound_is_checked() {
        let too_many = SwimWire::Gossip {
            updates: vec![update(1, 1); MAX_SWIM_UPDATES + 1],
        };
        assert!(matches!(
            too_many.validate(),
            Err(SwimWireError::TooMany {
                what: "updates",
                ..
            })
        ));
        let long_id = SwimWire::Ping {
            seq: 1,
            updates: vec![SwimUpdate {
                peer: vec![1; MAX_PEER_KEY + 1],
                ..update(1, 0)
            }],
            load: None,
        };
        assert_eq!(
            long_id.validate(),
            Err(SwimWireError::PeerId(MAX_PEER_KEY + 1))
        );
        let empty_by = SwimWire::Ack {
            seq: 1,
            updates: vec![SwimUpdate {
                by: Some(Vec::new()),
                ..update(1, 0)
            }],
            load: None,
        };
        assert_eq!(empty_by.validate(), Err(SwimWireError::PeerId(0)));
        let addrs = SwimWire::PingReq {
            seq: 1,
            target: vec![2; 38],
            target_addrs: vec![vec![1]; MAX_SWIM_ADDRS + 1],
            updates: Vec::new(),
        };
        assert!(matches!(
            addrs.validate(),
            Err(SwimWireError::TooMany {
                what: "addresses",
                ..
            })
        ));
        let long_addr = SwimWire::Gossip {
            updates: vec![SwimUpdate {
                addrs: vec![vec![1; MAX_SWIM_ADDR + 1]],
                ..update(1, 0)
            }],
        };
        assert_eq!(
            long_addr.validate(),
            Err(SwimWireError::Addr(MAX_SWIM_ADDR + 1))
        );
        let buckets = SwimWire::Digest {
            buckets: vec![0; MAX_SWIM_BUCKETS + 1],
            join: false,
        };
        assert!(buckets.validate().is_err());
        assert_eq!(SwimWire::Nack { seq: 3 }.validate(), Ok(()));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let bytes = codec::encode(&SwimWire::Nack { seq: 5 }).unwrap();
        assert!(codec::decode::<SwimWire>(&bytes[..bytes.len() - 1], MAX_SWIM_BYTES).is_err());
        assert!(codec::decode::<SwimWire>(&[0xff; 64], MAX_SWIM_BYTES).is_err());
        // A length prefix claiming more than the input holds is refused before allocating.
        let mut lie = vec![4u8]; // Gossip
        lie.extend([0xfc, 0xff, 0xff, 0xff, 0x7f]);
        assert!(codec::decode::<SwimWire>(&lie, MAX_SWIM_BYTES).is_err());
    }
}
