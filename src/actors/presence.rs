//! Presence with Phoenix.Presence semantics: who is in which topic.
//!
//! [`Presence`] (one per node, in the hub) holds the table and changes it
//! synchronously, so no track or untrack is ever lost, whatever happens to an actor.
//! The [`PresenceTracker`] actor (supervised by the RootSupervisor, permanent) only
//! batches the resulting diffs per topic over `presence.broadcast_period_ms` and
//! broadcasts them through PubSub's fastlane as `presence_diff`. While it restarts,
//! diffs are broadcast directly, unbatched.
//!
//! ```text
//! presence_state  {"alice": {"metas": [{"phx_ref": "..", "status": "online", ..}]}}
//! presence_diff   {"joins": {key: {"metas": [..]}}, "leaves": {key: {"metas": [..]}}}
//! ```
//! An update is a leave of the old meta plus a join of the new one carrying
//! `phx_ref_prev`, exactly as Phoenix.Presence sends it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Map, Value, json};

use crate::metrics::Metrics;
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::{Outbox, PubSub, SessionId, offer};

const DIFF: &str = "presence_diff";

/// One tracked presence: one channel join of one connection.
#[derive(Debug, Clone)]
pub struct Entry {
    session: SessionId,
    key: String,
    /// The meta as sent to clients, `phx_ref` included.
    meta: Map<String, Value>,
}

/// Every presence on this node, by topic.
#[derive(Default)]
struct Table {
    topics: HashMap<String, Vec<Entry>>,
    by_session: HashMap<SessionId, Vec<String>>,
    len: usize,
}

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

impl Table {
    fn list(&self, topic: &str) -> Value {
        group(self.topics.get(topic).into_iter().flatten())
    }

    fn insert(&mut self, topic: &str, entry: Entry) {
        self.by_session
            .entry(entry.session)
            .or_default()
            .push(topic.to_string());
        self.topics
            .entry(topic.to_string())
            .or_default()
            .push(entry);
        self.len += 1;
    }

    fn remove(&mut self, topic: &str, session: SessionId) -> Vec<Entry> {
        let Some(topics) = self.by_session.get_mut(&session) else {
            return Vec::new();
        };
        let Some(i) = topics.iter().position(|t| t == topic) else {
            return Vec::new();
        };
        topics.swap_remove(i);
        if topics.is_empty() {
            self.by_session.remove(&session);
        }
        let Some(entries) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        let (gone, kept): (Vec<Entry>, Vec<Entry>) =
            entries.drain(..).partition(|e| e.session == session);
        *entries = kept;
        if entries.is_empty() {
            self.topics.remove(topic);
        }
        self.len -= gone.len();
        gone
    }
}

/// Where to push `presence_state` for a new join.
pub struct StateTarget {
    pub outbox: Outbox,
    pub vsn: Vsn,
    pub join_ref: Option<String>,
}

/// The node's presence: the table, and the tracker its diffs go through.
pub struct Presence {
    table: Mutex<Table>,
    tracker: RwLock<Option<ActorRef<PresenceMsg>>>,
    pubsub: Arc<PubSub>,
    metrics: Arc<Metrics>,
}

impl Presence {
    pub fn new(pubsub: Arc<PubSub>, metrics: Arc<Metrics>) -> Presence {
        Presence {
            table: Mutex::default(),
            tracker: RwLock::new(None),
            pubsub,
            metrics,
        }
    }

    pub(crate) fn set_tracker(&self, tracker: Option<ActorRef<PresenceMsg>>) {
        *self.tracker.write() = tracker;
    }

    /// Track `key` in `topic` for `session` with `meta` (`phx_ref` is added). The
    /// joiner gets the topic's `presence_state` at once; everyone gets the diff.
    pub fn track(
        &self,
        topic: &str,
        session: SessionId,
        key: &str,
        mut meta: Map<String, Value>,
        target: StateTarget,
    ) {
        meta.insert("phx_ref".into(), Value::String(new_ref()));
        let entry = Entry {
            session,
            key: key.to_string(),
            meta,
        };
        let (old, state) = {
            let mut table = self.table.lock();
            // A re-track of the same join replaces the old entry.
            let old = table.remove(topic, session);
            table.insert(topic, entry.clone());
            self.metrics.presences.set(table.len as i64);
            (old, table.list(topic))
        };
        let frame = phoenix::encode(
            target.vsn,
            target.join_ref.as_deref(),
            None,
            topic,
            "presence_state",
            &state,
        );
        offer(&target.outbox, frame, &self.metrics);
        self.diff(topic, vec![entry], old);
    }

    /// Replace fields of the session's meta in `topic` (e.g. `status`).
    pub fn update(&self, topic: &str, session: SessionId, changes: &Map<String, Value>) {
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        {
            let mut table = self.table.lock();
            for e in table
                .topics
                .get_mut(topic)
                .into_iter()
                .flatten()
                .filter(|e| e.session == session)
            {
                leaves.push(e.clone());
                let prev = e.meta.get("phx_ref").cloned().unwrap_or(Value::Null);
                for (k, v) in changes {
                    e.meta.insert(k.clone(), v.clone());
                }
                e.meta.insert("phx_ref_prev".into(), prev);
                e.meta.insert("phx_ref".into(), Value::String(new_ref()));
                joins.push(e.clone());
            }
        }
        self.diff(topic, joins, leaves);
    }

    /// The session left `topic`.
    pub fn untrack(&self, topic: &str, session: SessionId) {
        let gone = {
            let mut table = self.table.lock();
            let gone = table.remove(topic, session);
            self.metrics.presences.set(table.len as i64);
            gone
        };
        self.diff(topic, Vec::new(), gone);
    }

    /// The session is gone: remove it from every topic.
    pub fn untrack_session(&self, session: SessionId) {
        let diffs: Vec<(String, Vec<Entry>)> = {
            let mut table = self.table.lock();
            let topics = table.by_session.get(&session).cloned().unwrap_or_default();
            let diffs = topics.into_iter().map(|t| {
                let gone = table.remove(&t, session);
                (t, gone)
            });
            let diffs = diffs.collect();
            self.metrics.presences.set(table.len as i64);
            diffs
        };
        for (topic, gone) in diffs {
            self.diff(&topic, Vec::new(), gone);
        }
    }

    /// The state of one topic, as sent in `presence_state`.
    pub fn list(&self, topic: &str) -> Value {
        self.table.lock().list(topic)
    }

    /// Hand a diff to the tracker for batching; broadcast it directly if the
    /// tracker is restarting.
    fn diff(&self, topic: &str, joins: Vec<Entry>, leaves: Vec<Entry>) {
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let tracker = self.tracker.read().clone();
        let msg = PresenceMsg::Diff {
            topic: topic.to_string(),
            joins,
            leaves,
        };
        let unsent = match tracker {
            Some(t) => t.cast(msg).err().and_then(|e| match e {
                ractor::MessagingErr::SendErr(msg) => Some(msg),
                _ => None,
            }),
            None => Some(msg),
        };
        if let Some(PresenceMsg::Diff {
            topic,
            joins,
            leaves,
        }) = unsent
        {
            broadcast(&self.pubsub, &topic, &joins, &leaves);
        }
    }
}

fn broadcast(pubsub: &PubSub, topic: &str, joins: &[Entry], leaves: &[Entry]) {
    let payload = json!({"joins": group(joins), "leaves": group(leaves)});
    pubsub.broadcast(topic, DIFF, &payload, None);
}

/// The presence tracker actor: batches and broadcasts diffs.
pub struct PresenceTracker;

pub enum PresenceMsg {
    /// Changes to broadcast as (part of) a `presence_diff`.
    Diff {
        topic: String,
        joins: Vec<Entry>,
        leaves: Vec<Entry>,
    },
    /// Broadcast the diffs gathered since the last flush.
    Flush,
}

pub struct PresenceArgs {
    pub pubsub: Arc<PubSub>,
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

impl PresenceState {
    /// A batched diff may hold a join and a leave of the same meta; phoenix.js
    /// applies joins before leaves, so the net effect is right. A joiner whose
    /// `presence_state` already includes a queued change receives it again in the
    /// diff: joins and leaves are keyed by `phx_ref`, so applying them is idempotent.
    fn add(
        &mut self,
        myself: &ActorRef<PresenceMsg>,
        topic: String,
        joins: Vec<Entry>,
        leaves: Vec<Entry>,
    ) {
        if self.args.broadcast_period.is_zero() {
            return broadcast(&self.args.pubsub, &topic, &joins, &leaves);
        }
        let (j, l) = self.pending.entry(topic).or_default();
        j.extend(joins);
        l.extend(leaves);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.send_after(self.args.broadcast_period, || PresenceMsg::Flush);
        }
    }

    fn flush(&mut self) {
        self.flush_scheduled = false;
        for (topic, (joins, leaves)) in std::mem::take(&mut self.pending) {
            broadcast(&self.args.pubsub, &topic, &joins, &leaves);
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
        match msg {
            PresenceMsg::Diff {
                topic,
                joins,
                leaves,
            } => state.add(&myself, topic, joins, leaves),
            PresenceMsg::Flush => state.flush(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut PresenceState,
    ) -> Result<(), ActorProcessingErr> {
        // Nothing gathered is lost on a stop.
        state.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Subscriber;
    use crate::pubsub::outbox::{Outbound, OutboxReceiver, channel};

    /// Presence with a tracker batching over `period` (none: no tracker at all),
    /// and one subscriber of "room" (session 1) to watch what it sends.
    async fn presence(period: Option<Duration>) -> (Presence, Outbox, OutboxReceiver) {
        let metrics = Arc::new(Metrics::new());
        let pubsub = Arc::new(PubSub::new(metrics.clone()));
        let (outbox, rx) = channel(16);
        let sub = Subscriber {
            session: 1,
            vsn: Vsn::V2,
            outbox: outbox.clone(),
        };
        pubsub.subscribe("room", sub);
        let presence = Presence::new(pubsub.clone(), metrics);
        if let Some(broadcast_period) = period {
            let args = PresenceArgs {
                pubsub,
                broadcast_period,
            };
            let (actor, _) = Actor::spawn(None, PresenceTracker, args).await.unwrap();
            presence.set_tracker(Some(actor));
        }
        (presence, outbox, rx)
    }

    fn online() -> Map<String, Value> {
        let mut meta = Map::new();
        meta.insert("status".into(), json!("online"));
        meta
    }

    fn target(outbox: &Outbox) -> StateTarget {
        StateTarget {
            outbox: outbox.clone(),
            vsn: Vsn::V2,
            join_ref: Some("1".into()),
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
        let (presence, outbox, mut rx) = presence(Some(Duration::ZERO)).await;
        presence.track("room", 1, "alice", online(), target(&outbox));
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
        presence.update("room", 1, &changes);
        let diff = next(&mut rx).await;
        assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["phx_ref"], first_ref);
        assert_eq!(
            diff[4]["joins"]["alice"]["metas"][0]["phx_ref_prev"],
            first_ref
        );
        assert_eq!(diff[4]["joins"]["alice"]["metas"][0]["status"], "away");

        presence.untrack_session(1);
        let diff = next(&mut rx).await;
        assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["status"], "away");
        assert_eq!(presence.list("room"), json!({}));
        assert_eq!(presence.table.lock().len, 0);
    }

    #[tokio::test]
    async fn changes_within_the_period_are_one_diff() {
        let (presence, outbox, mut rx) = presence(Some(Duration::from_millis(50))).await;
        let (other, _other_rx) = channel(16);
        presence.track("room", 1, "alice", online(), target(&outbox));
        presence.track("room", 2, "bob", online(), target(&other));
        presence.track("room", 3, "carol", online(), target(&other));
        presence.untrack("room", 3);
        assert_eq!(next(&mut rx).await[3], "presence_state");
        let diff = next(&mut rx).await;
        assert_eq!(diff[3], "presence_diff");
        assert_eq!(diff[4]["joins"].as_object().unwrap().len(), 3, "{diff}");
        assert!(diff[4]["leaves"].get("carol").is_some(), "{diff}");
        assert!(rx.try_recv().is_none(), "one diff for the whole period");
    }

    #[tokio::test]
    async fn without_a_tracker_diffs_go_out_directly() {
        let (presence, outbox, mut rx) = presence(None).await;
        presence.track("room", 1, "alice", online(), target(&outbox));
        assert_eq!(next(&mut rx).await[3], "presence_state");
        assert_eq!(next(&mut rx).await[3], "presence_diff");
        presence.untrack("room", 1);
        let diff = next(&mut rx).await;
        assert!(diff[4]["leaves"].get("alice").is_some(), "{diff}");
    }
}
