//! Presence across a cluster: the other nodes' presences live in the same table,
//! tagged with their node (`Entry::origin`), so `presence_state` and every
//! `presence_diff` a client gets cover the whole cluster.
//!
//! Each node owns its own presences and sends their changes (deltas) and, when
//! asked, its full state; see [`crate::cluster`] for heartbeats, numbering and
//! node failure. Applying is idempotent (joins by `phx_ref`), so a full state and a
//! delta that overlap do no harm.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Entry, Presence};
use crate::cluster::Cluster;

/// One presence as it crosses nodes: its key and meta (`phx_ref` inside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    pub k: String,
    pub m: Map<String, Value>,
}

impl Wire {
    fn of(e: &Entry) -> Wire {
        Wire {
            k: e.key.clone(),
            m: e.meta.clone(),
        }
    }
}

fn phx_ref(meta: &Map<String, Value>) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

/// Send this node's own changes in `topic` to the other nodes.
pub(super) fn replicate(cluster: &Cluster, topic: &str, joins: &[Entry], leaves: &[Entry]) {
    let joins: Vec<Wire> = joins
        .iter()
        .filter(|e| e.origin.is_none())
        .map(Wire::of)
        .collect();
    let leaves: Vec<String> = leaves
        .iter()
        .filter(|e| e.origin.is_none())
        .filter_map(|e| phx_ref(&e.meta).map(str::to_string))
        .collect();
    // A presence that came and went within one flush (a quick update, a join
    // then a leave) is in both lists: it is neither joined nor left for the others.
    let both: Vec<String> = joins
        .iter()
        .filter_map(|w| phx_ref(&w.m))
        .filter(|r| leaves.iter().any(|l| l == r))
        .map(str::to_string)
        .collect();
    let joins: Vec<Wire> = joins
        .into_iter()
        .filter(|w| phx_ref(&w.m).is_none_or(|r| !both.iter().any(|b| b == r)))
        .collect();
    let leaves: Vec<String> = leaves.into_iter().filter(|l| !both.contains(l)).collect();
    if !joins.is_empty() || !leaves.is_empty() {
        cluster.publish_presence_delta(topic, joins, leaves);
    }
}

impl Presence {
    /// Apply `node`'s changes in `topic`: leaves (by `phx_ref`), then joins.
    pub(crate) fn apply_remote(
        &self,
        node: &str,
        topic: &str,
        joins: Vec<Wire>,
        leaves: &[String],
    ) {
        let origin: Arc<str> = Arc::from(node);
        {
            let mut inner = self.inner.lock();
            let mut gone = Vec::new();
            if let Some(entries) = inner.table.topics.get_mut(topic) {
                let (out, kept): (Vec<Entry>, Vec<Entry>) = entries.drain(..).partition(|e| {
                    e.origin.as_deref() == Some(node)
                        && phx_ref(&e.meta).is_some_and(|r| leaves.iter().any(|l| l == r))
                });
                *entries = kept;
                gone = out;
            }
            inner.table.len -= gone.len();
            let mut added = Vec::new();
            for w in joins {
                let known = inner.table.topics.get(topic).is_some_and(|entries| {
                    entries.iter().any(|e| {
                        e.origin.as_deref() == Some(node) && phx_ref(&e.meta) == phx_ref(&w.m)
                    })
                });
                if known {
                    continue;
                }
                let entry = Entry {
                    session: 0,
                    key: w.k,
                    meta: w.m,
                    origin: Some(origin.clone()),
                };
                inner.table.insert(topic, entry.clone());
                added.push(entry);
            }
            if inner.table.topics.get(topic).is_some_and(Vec::is_empty) {
                inner.table.topics.remove(topic);
            }
            self.queue(&mut inner, topic, added, gone);
        }
        self.after_change();
    }

    /// `node`'s full state: what it no longer has leaves, what is new joins.
    pub(crate) fn replace_remote(&self, node: &str, state: HashMap<String, Vec<Wire>>) {
        let held: Vec<(String, Vec<String>)> = {
            let inner = self.inner.lock();
            inner
                .table
                .topics
                .iter()
                .map(|(topic, entries)| {
                    let refs = entries
                        .iter()
                        .filter(|e| e.origin.as_deref() == Some(node))
                        .filter_map(|e| phx_ref(&e.meta).map(str::to_string))
                        .collect::<Vec<_>>();
                    (topic.clone(), refs)
                })
                .filter(|(_, refs)| !refs.is_empty())
                .collect()
        };
        for (topic, refs) in held {
            let keep: Vec<&str> = state
                .get(&topic)
                .into_iter()
                .flatten()
                .filter_map(|w| phx_ref(&w.m))
                .collect();
            let stale: Vec<String> = refs
                .into_iter()
                .filter(|r| !keep.contains(&r.as_str()))
                .collect();
            if !stale.is_empty() {
                self.apply_remote(node, &topic, Vec::new(), &stale);
            }
        }
        for (topic, wires) in state {
            self.apply_remote(node, &topic, wires, &[]);
        }
    }

    /// `node` is gone (no heartbeat): every presence it had leaves.
    pub(crate) fn purge_remote(&self, node: &str) {
        self.replace_remote(node, HashMap::new());
    }

    /// Send this node's full state to the other nodes (numbered with the deltas).
    pub(crate) fn publish_state(&self, cluster: &Cluster) {
        let inner = self.inner.lock();
        let mut state: HashMap<String, Vec<Wire>> = HashMap::new();
        for (topic, entries) in &inner.table.topics {
            let own: Vec<Wire> = entries
                .iter()
                .filter(|e| e.origin.is_none())
                .map(Wire::of)
                .collect();
            if !own.is_empty() {
                state.insert(topic.clone(), own);
            }
        }
        // Under the lock: no delta can be numbered between this state and its send.
        cluster.publish_presence_state(state);
    }
}
