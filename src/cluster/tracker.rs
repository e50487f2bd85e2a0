//! Presence replication between nodes, after Phoenix.Tracker: each node owns its
//! presences, numbers its changes, and heartbeats its latest number.
//!
//! ```text
//! armoricore:presence   {"k": "delta", "n": node, "seq": 7, "t": topic, "j": [{k, m}], "l": [phx_ref]}
//!                       {"k": "state", "n": node, "seq": 7, "s": {topic: [{k, m}]}}
//!                       {"k": "sync",  "n": node}        everyone: send your state
//! armoricore:nodes      heartbeat {"n": node, "e": "heartbeat", "p": {"seq": 7}}
//! ```
//!
//! A node seen for the first time (a new node, or one back after a partition)
//! gets our state and is asked for its own. A delta that does not follow the last
//! number seen, or a heartbeat announcing a number not seen, means something was
//! lost: ask for a sync. A node silent for `cluster.node_timeout_ms` has all its
//! presences removed (leaves pushed to clients); so has an earlier run of a node
//! that starts again under the same name, at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::actors::presence::Wire;

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub(super) enum Replica {
    Delta {
        n: String,
        seq: u64,
        t: String,
        j: Vec<Wire>,
        l: Vec<String>,
    },
    State {
        n: String,
        seq: u64,
        s: HashMap<String, Vec<Wire>>,
    },
    Sync {
        n: String,
    },
}

/// What this node knows of another.
pub(super) struct Peer {
    pub last_seen: Instant,
    /// Last change number applied; `None` until its full state arrived.
    pub seq: Option<u64>,
    /// A number a heartbeat announced that no delta has brought yet: lost if the
    /// next heartbeat announces it again (a heartbeat may overtake a delta).
    pub suspect: Option<u64>,
    /// What its last heartbeat said of it (the dashboard).
    pub summary: serde_json::Value,
}

/// The name a node id was made from (`name-xxxxxxxx`).
fn name_of(node: &str) -> &str {
    node.rsplit_once('-').map_or(node, |(name, _)| name)
}

impl Cluster {
    fn presence_channel(&self) -> String {
        format!("{}presence", self.config.channel_prefix)
    }

    fn send_replica(&self, message: &Replica) {
        let body = Bytes::from(serde_json::to_vec(message).expect("presence serializes"));
        if self
            .control
            .try_send((self.presence_channel(), body))
            .is_err()
        {
            self.metrics.redis_dropped.inc();
        }
    }

    /// Nodes not heard from for `node_timeout_ms` are gone (run by the receive task).
    pub(super) fn drop_silent(&self) {
        let timeout = std::time::Duration::from_millis(self.config.node_timeout_ms);
        let silent: Vec<String> = self
            .peers
            .lock()
            .iter()
            .filter(|(_, p)| p.last_seen.elapsed() >= timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for node in silent {
            tracing::warn!(%node, "cluster node silent: its presences leave");
            self.drop_peer(&node);
        }
    }

    fn presence_now(&self) -> Option<std::sync::Arc<crate::actors::presence::Presence>> {
        let weak = self.presence.lock().clone();
        weak.and_then(|p| p.upgrade())
    }

    /// Number and send this node's changes in `topic` (called under the presence lock).
    pub fn publish_presence_delta(&self, topic: &str, joins: Vec<Wire>, leaves: Vec<String>) {
        let seq = self.presence_seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.send_replica(&Replica::Delta {
            n: self.node_id.clone(),
            seq,
            t: topic.to_string(),
            j: joins,
            l: leaves,
        });
    }

    /// Send this node's full state (called under the presence lock).
    pub fn publish_presence_state(&self, state: HashMap<String, Vec<Wire>>) {
        self.send_replica(&Replica::State {
            n: self.node_id.clone(),
            seq: self.presence_seq.load(Ordering::SeqCst),
            s: state,
        });
    }

    fn send_state(&self) {
        if let Some(presence) = self.presence_now() {
            presence.publish_state(self);
        }
    }

    fn ask_sync(&self) {
        self.send_replica(&Replica::Sync {
            n: self.node_id.clone(),
        });
    }

    /// A heartbeat from `node` announcing change number `seq`.
    pub(super) fn on_heartbeat(&self, node: String, seq: u64, summary: serde_json::Value) {
        let (new, lost, waiting) = {
            let mut peers = self.peers.lock();
            match peers.get_mut(&node) {
                Some(peer) => {
                    peer.last_seen = Instant::now();
                    peer.summary = summary;
                    let behind = peer.seq.is_some_and(|s| s < seq);
                    let lost = behind && peer.suspect == Some(seq);
                    peer.suspect = behind.then_some(seq);
                    (false, lost, peer.seq.is_none())
                }
                None => {
                    peers.insert(
                        node.clone(),
                        Peer {
                            last_seen: Instant::now(),
                            seq: None,
                            suspect: None,
                            summary,
                        },
                    );
                    (true, false, false)
                }
            }
        };
        if new {
            tracing::info!(%node, "cluster node joined");
            self.forget_earlier_runs(&node);
            self.send_state();
            self.ask_sync();
        } else if lost {
            tracing::warn!(%node, "presence changes lost: resyncing");
            self.mark_unsynced(&node);
            self.ask_sync();
        } else if waiting {
            // Its state has not come (a Sync or State was lost): ask again, once
            // per heartbeat.
            self.ask_sync();
        }
    }

    /// An earlier run of a node restarting under the same name leaves no ghosts.
    fn forget_earlier_runs(&self, node: &str) {
        let name = name_of(node);
        let earlier: Vec<String> = self
            .peers
            .lock()
            .keys()
            .filter(|n| n.as_str() != node && name_of(n) == name)
            .cloned()
            .collect();
        for old in earlier {
            tracing::info!(node = %old, "an earlier run of a restarted node: its presences leave");
            self.drop_peer(&old);
        }
    }

    fn mark_unsynced(&self, node: &str) {
        if let Some(peer) = self.peers.lock().get_mut(node) {
            peer.seq = None;
        }
    }

    /// Remove a node and every presence it had.
    pub(super) fn drop_peer(&self, node: &str) {
        if let Some(peer) = self.peers.lock().remove(node) {
            let mut departed = self.departed.lock();
            departed.retain(|(n, _)| n != node);
            if departed.len() == super::DEPARTED_KEPT {
                departed.pop_front();
            }
            departed.push_back((node.to_string(), peer));
        }
        if let Some(presence) = self.presence_now() {
            presence.purge_remote(node);
        }
    }

    /// A message on the presence channel.
    pub(super) fn on_replica(&self, body: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Replica>(body) else {
            tracing::warn!("unreadable presence replication message");
            return;
        };
        let Some(presence) = self.presence_now() else {
            return;
        };
        match message {
            Replica::Sync { n } if n != self.node_id => self.send_state(),
            Replica::State { n, seq, s } if n != self.node_id => {
                // Only from a node we know alive: a late state of a dropped node
                // must not bring its presences back (a new node's heartbeat comes
                // first, then it is asked again).
                let known = match self.peers.lock().get_mut(&n) {
                    Some(peer) => {
                        peer.seq = Some(seq);
                        peer.suspect = None;
                        peer.last_seen = Instant::now();
                        true
                    }
                    None => false,
                };
                if known {
                    presence.replace_remote(&n, s);
                }
            }
            Replica::Delta { n, seq, t, j, l } if n != self.node_id => {
                let next = {
                    let mut peers = self.peers.lock();
                    match peers.get_mut(&n).and_then(|p| p.seq.as_mut()) {
                        Some(last) if seq == *last + 1 => {
                            *last = seq;
                            Some(true)
                        }
                        Some(last) if seq <= *last => Some(false), // already in a state
                        Some(_) => None,
                        None => Some(false), // waiting for its state
                    }
                };
                match next {
                    Some(true) => presence.apply_remote(&n, &t, j, &l),
                    Some(false) => {}
                    None => {
                        tracing::warn!(node = %n, "presence delta out of order: resyncing");
                        self.mark_unsynced(&n);
                        self.ask_sync();
                    }
                }
            }
            _ => {}
        }
    }
}
