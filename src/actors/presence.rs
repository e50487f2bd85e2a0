//! PresenceTracker: who is in which topic, with Phoenix.Presence semantics.
//!
//! Supervised by the RootSupervisor (permanent). The table it works on is owned by
//! the node (`Arc<Mutex<PresenceTable>>`), so a restart of the actor loses nothing.
//! Its mailbox carries control messages only (track, untrack, update); diffs go out
//! through PubSub's fastlane as `presence_diff` broadcasts.
//!
//! ```text
//! presence_state  {"alice": {"metas": [{"phx_ref": "..", "status": "online", ..}]}}
//! presence_diff   {"joins": {key: {"metas": [..]}}, "leaves": {key: {"metas": [..]}}}
//! ```
//! An update is a leave of the old meta plus a join of the new one carrying
//! `phx_ref_prev`, exactly as Phoenix.Presence sends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Map, Value, json};

use crate::metrics::Metrics;
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::{Outbox, PubSub, SessionId};

/// The presence actor.
pub struct PresenceTracker;

/// One tracked presence: one channel join of one connection.
#[derive(Debug, Clone)]
struct Entry {
    session: SessionId,
    key: String,
    /// The meta as sent to clients, `phx_ref` included.
    meta: Map<String, Value>,
}

/// Every presence on this node, by topic.
#[derive(Default)]
pub struct PresenceTable {
    topics: HashMap<String, Vec<Entry>>,
    by_session: HashMap<SessionId, Vec<String>>,
}

/// Where to push `presence_state` for a new join.
pub struct StateTarget {
    pub outbox: Outbox,
    pub vsn: Vsn,
    pub join_ref: Option<String>,
}

pub enum PresenceMsg {
    /// Broadcast the diffs gathered since the last flush.
    Flush,
    /// Track `key` in `topic` for `session`, push the topic's state to the joiner,
    /// then broadcast the join.
    Track {
        topic: String,
        session: SessionId,
        key: String,
        meta: Map<String, Value>,
        target: StateTarget,
    },
    /// Replace fields of the session's meta in `topic` (e.g. `status`).
    Update {
        topic: String,
        session: SessionId,
        changes: Map<String, Value>,
    },
    /// The session left `topic`.
    Untrack { topic: String, session: SessionId },
    /// The session is gone: remove it everywhere.
    UntrackSession { session: SessionId },
    /// The current state of a topic, as sent in `presence_state`.
    List {
        topic: String,
        reply: RpcReplyPort<Value>,
    },
}

pub struct PresenceArgs {
    pub table: Arc<Mutex<PresenceTable>>,
    pub pubsub: Arc<PubSub>,
    pub metrics: Arc<Metrics>,
    /// Diffs of one topic within this period go out as one `presence_diff`
    /// (zero: one diff per change).
    pub broadcast_period: Duration,
}

pub struct PresenceState {
    args: PresenceArgs,
    /// Joins and leaves per topic not yet broadcast.
    pending: HashMap<String, (Vec<Entry>, Vec<Entry>)>,
    flush_scheduled: bool,
}

const DIFF: &str = "presence_diff";

fn new_ref() -> String {
    format!("F{:016x}", rand::random::<u64>())
}

/// `{key: {metas: [...]}}` for a set of entries, in tracking order.
fn group<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Value {
    let mut out = Map::new();
    for e in entries {
        let slot = out
            .entry(e.key.clone())
            .or_insert_with(|| json!({"metas": []}));
        if let Some(metas) = slot["metas"].as_array_mut() {
            metas.push(Value::Object(e.meta.clone()));
        }
    }
    Value::Object(out)
}

impl PresenceTable {
    /// The state of one topic.
    pub fn list(&self, topic: &str) -> Value {
        group(self.topics.get(topic).into_iter().flatten())
    }

    fn remove(&mut self, topic: &str, session: SessionId) -> Vec<Entry> {
        let Some(entries) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        let (gone, kept): (Vec<Entry>, Vec<Entry>) =
            entries.drain(..).partition(|e| e.session == session);
        *entries = kept;
        if entries.is_empty() {
            self.topics.remove(topic);
        }
        if let Some(topics) = self.by_session.get_mut(&session) {
            topics.retain(|t| t != topic);
            if topics.is_empty() {
                self.by_session.remove(&session);
            }
        }
        gone
    }

    fn len(&self) -> usize {
        self.topics.values().map(Vec::len).sum()
    }
}

impl PresenceState {
    /// Queue a diff for `topic`, or send it now when batching is off.
    ///
    /// A batched diff may hold a join and a leave of the same meta; phoenix.js
    /// applies joins before leaves, so the net effect is right. A joiner whose
    /// `presence_state` already includes a queued change receives it again in the
    /// diff: joins and leaves are keyed by `phx_ref`, so applying them is idempotent.
    fn diff(
        &mut self,
        myself: &ActorRef<PresenceMsg>,
        topic: &str,
        joins: Vec<Entry>,
        leaves: Vec<Entry>,
    ) {
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        if self.args.broadcast_period.is_zero() {
            return self.broadcast(topic, &joins, &leaves);
        }
        let (j, l) = self.pending.entry(topic.to_string()).or_default();
        j.extend(joins);
        l.extend(leaves);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.send_after(self.args.broadcast_period, || PresenceMsg::Flush);
        }
    }

    fn broadcast(&self, topic: &str, joins: &[Entry], leaves: &[Entry]) {
        let payload = json!({"joins": group(joins), "leaves": group(leaves)});
        self.args.pubsub.broadcast(topic, DIFF, &payload, None);
    }

    fn flush(&mut self) {
        self.flush_scheduled = false;
        for (topic, (joins, leaves)) in std::mem::take(&mut self.pending) {
            self.broadcast(&topic, &joins, &leaves);
        }
    }
}

impl Actor for PresenceTracker {
    type Msg = PresenceMsg;
    type State = PresenceState;
    type Arguments = PresenceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: PresenceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PresenceState {
            args,
            pending: HashMap::new(),
            flush_scheduled: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PresenceMsg,
        state: &mut PresenceState,
    ) -> Result<(), ActorProcessingErr> {
        let table = state.args.table.clone();
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        match msg {
            PresenceMsg::Flush => state.flush(),
            PresenceMsg::Track {
                topic,
                session,
                key,
                mut meta,
                target,
            } => {
                // A re-track of the same join replaces the old entry.
                let old = table.remove(&topic, session);
                meta.insert("phx_ref".into(), Value::String(new_ref()));
                let entry = Entry { session, key, meta };
                table
                    .topics
                    .entry(topic.clone())
                    .or_default()
                    .push(entry.clone());
                table
                    .by_session
                    .entry(session)
                    .or_default()
                    .push(topic.clone());
                let state_payload = table.list(&topic);
                let frame = phoenix::encode(
                    target.vsn,
                    target.join_ref.as_deref(),
                    None,
                    &topic,
                    "presence_state",
                    &state_payload,
                );
                if target.outbox.push(frame).is_ok() {
                    state.args.metrics.messages_out.inc();
                }
                state.diff(&myself, &topic, vec![entry], old);
            }
            PresenceMsg::Update {
                topic,
                session,
                changes,
            } => {
                let Some(entries) = table.topics.get_mut(&topic) else {
                    return Ok(());
                };
                let mut joins = Vec::new();
                let mut leaves = Vec::new();
                for e in entries.iter_mut().filter(|e| e.session == session) {
                    leaves.push(e.clone());
                    let prev = e.meta.get("phx_ref").cloned().unwrap_or(Value::Null);
                    for (k, v) in &changes {
                        e.meta.insert(k.clone(), v.clone());
                    }
                    e.meta.insert("phx_ref_prev".into(), prev);
                    e.meta.insert("phx_ref".into(), Value::String(new_ref()));
                    joins.push(e.clone());
                }
                state.diff(&myself, &topic, joins, leaves);
            }
            PresenceMsg::Untrack { topic, session } => {
                let gone = table.remove(&topic, session);
                state.diff(&myself, &topic, Vec::new(), gone);
            }
            PresenceMsg::UntrackSession { session } => {
                let topics = table.by_session.get(&session).cloned().unwrap_or_default();
                for topic in topics {
                    let gone = table.remove(&topic, session);
                    state.diff(&myself, &topic, Vec::new(), gone);
                }
            }
            PresenceMsg::List { topic, reply } => {
                let _ = reply.send(table.list(&topic));
            }
        }
        state.args.metrics.presences.set(table.len() as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Subscriber;
    use crate::pubsub::outbox::{Outbound, OutboxReceiver, channel};

    /// A tracker, and one subscriber of "room" (session 1) to watch what it sends.
    async fn tracker(period: Duration) -> (ActorRef<PresenceMsg>, Outbox, OutboxReceiver) {
        let metrics = Arc::new(Metrics::new());
        let pubsub = Arc::new(PubSub::new(metrics.clone()));
        let (outbox, rx) = channel(16);
        let sub = Subscriber {
            session: 1,
            vsn: Vsn::V2,
            outbox: outbox.clone(),
        };
        pubsub.subscribe("room", sub);
        let args = PresenceArgs {
            table: Arc::default(),
            pubsub,
            metrics,
            broadcast_period: period,
        };
        let (actor, _) = Actor::spawn(None, PresenceTracker, args).await.unwrap();
        (actor, outbox, rx)
    }

    fn track(session: SessionId, key: &str, outbox: &Outbox) -> PresenceMsg {
        let mut meta = Map::new();
        meta.insert("status".into(), json!("online"));
        PresenceMsg::Track {
            topic: "room".into(),
            session,
            key: key.into(),
            meta,
            target: StateTarget {
                outbox: outbox.clone(),
                vsn: Vsn::V2,
                join_ref: Some("1".into()),
            },
        }
    }

    async fn next(rx: &mut OutboxReceiver) -> Value {
        match rx.recv().await {
            Outbound::Frame(f) => serde_json::from_str(f.as_str()).unwrap(),
            Outbound::Close(c) => panic!("{c:?}"),
        }
    }

    #[tokio::test]
    async fn track_update_untrack() {
        let (actor, outbox, mut rx) = tracker(Duration::ZERO).await;
        actor.cast(track(1, "alice", &outbox)).unwrap();
        let state = next(&mut rx).await;
        assert_eq!(state[3], "presence_state");
        assert_eq!(state[0], "1");
        assert_eq!(state[4]["alice"]["metas"][0]["status"], "online");
        let diff = next(&mut rx).await;
        assert_eq!(diff[3], "presence_diff");
        assert_eq!(diff[0], Value::Null);
        let first_ref = diff[4]["joins"]["alice"]["metas"][0]["phx_ref"].clone();

        let mut changes = Map::new();
        changes.insert("status".into(), json!("away"));
        actor
            .cast(PresenceMsg::Update {
                topic: "room".into(),
                session: 1,
                changes,
            })
            .unwrap();
        let diff = next(&mut rx).await;
        assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["phx_ref"], first_ref);
        assert_eq!(
            diff[4]["joins"]["alice"]["metas"][0]["phx_ref_prev"],
            first_ref
        );
        assert_eq!(diff[4]["joins"]["alice"]["metas"][0]["status"], "away");

        actor
            .cast(PresenceMsg::UntrackSession { session: 1 })
            .unwrap();
        let diff = next(&mut rx).await;
        assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["status"], "away");
        let listed = ractor::call!(actor, |reply| PresenceMsg::List {
            topic: "room".into(),
            reply
        })
        .unwrap();
        assert_eq!(listed, json!({}));
        actor.stop(None);
    }

    #[tokio::test]
    async fn changes_within_the_period_are_one_diff() {
        let (actor, outbox, mut rx) = tracker(Duration::from_millis(50)).await;
        let (other, _other_rx) = channel(16);
        actor.cast(track(1, "alice", &outbox)).unwrap();
        actor.cast(track(2, "bob", &other)).unwrap();
        actor.cast(track(3, "carol", &other)).unwrap();
        actor
            .cast(PresenceMsg::Untrack {
                topic: "room".into(),
                session: 3,
            })
            .unwrap();
        assert_eq!(next(&mut rx).await[3], "presence_state");
        let diff = next(&mut rx).await;
        assert_eq!(diff[3], "presence_diff");
        let joins = diff[4]["joins"].as_object().unwrap();
        assert_eq!(joins.len(), 3, "{diff}");
        assert!(diff[4]["leaves"].get("carol").is_some(), "{diff}");
        assert!(rx.try_recv().is_none(), "one diff for the whole period");
        actor.stop(None);
    }
}
