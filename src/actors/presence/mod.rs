//! Presence with Phoenix.Presence semantics: who is in which topic.
//!
//! [`Presence`] (one per node, in the hub) holds the table and changes it
//! synchronously, so no track or untrack is ever lost, whatever happens to an actor.
//! Diffs gather per topic and are broadcast through PubSub's fastlane as one
//! `presence_diff` per `presence.broadcast_period_ms`; the [`PresenceTracker`] actor
//! (supervised by the RootSupervisor, permanent) is the timer of those flushes.
//! While it restarts, changes are flushed at once, unbatched.
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

mod remote;

pub use remote::Wire;

use crate::bus::Outlet;
use crate::metrics::Metrics;
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::{Outbox, PubSub, SessionId, offer};

const DIFF: &str = "presence_diff";

/// Topics with fewer presences get an exact, freshly encoded `presence_state` on
/// every join (it includes the joiner, as Phoenix's does); bigger ones get the
/// snapshot of the last flush, at most `broadcast_period` old, completed by the
/// next diff. Encoding a 5,000-entry state for each of 5,000 joins is what this saves.
const SNAPSHOT_MIN_ENTRIES: usize = 256;

/// One tracked presence: one channel join of one connection.
#[derive(Debug, Clone)]
pub struct Entry {
    session: SessionId,
    key: String,
    /// The meta as sent to clients, `phx_ref` included.
    meta: Map<String, Value>,
    /// The node that owns it; `None`: this one (see [`remote`]).
    origin: Option<Arc<str>>,
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
        if entry.origin.is_none() {
            self.by_session
                .entry(entry.session)
                .or_default()
                .push(topic.to_string());
        }
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
        let (gone, kept): (Vec<Entry>, Vec<Entry>) = entries
            .drain(..)
            .partition(|e| e.origin.is_none() && e.session == session);
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

/// Table, pending diffs and state snapshots, changed together under one lock.
#[derive(Default)]
struct Inner {
    table: Table,
    /// Joins and leaves per topic since the last flush.
    pending: HashMap<String, (Vec<Entry>, Vec<Entry>)>,
    /// Each topic's encoded `presence_state` payload, cached until its next flush:
    /// a join storm encodes the state once per flush, not once per join.
    snapshots: HashMap<String, Arc<str>>,
    flush_scheduled: bool,
    /// Each room user's status as last published in `presence.update`.
    published: HashMap<String, HashMap<String, String>>,
}

/// The node's presence. Every change is applied to the table at once, under one
/// lock, so no track or untrack is ever lost; diffs gather per topic and go out as
/// one `presence_diff` per `broadcast_period` (the PresenceTracker is the timer).
///
/// In a big topic a joiner's `presence_state` may be the cached snapshot of the
/// last flush (see [`SNAPSHOT_MIN_ENTRIES`]): every change after it is in a later
/// diff the joiner receives (it subscribed before), and changes already in a
/// state come again harmlessly, since phoenix.js applies joins and leaves by `phx_ref`.
pub struct Presence {
    inner: Mutex<Inner>,
    tracker: RwLock<Option<ActorRef<PresenceMsg>>>,
    broadcast_period: Duration,
    pubsub: Arc<PubSub>,
    metrics: Arc<Metrics>,
    /// Where `presence.update` events go (`bus.publish_presence`).
    outlet: Option<Outlet>,
}

/// The room id of a topic whose presence changes are published (`chat:room:{id}`,
/// `presence:room:{id}`).
fn room_of(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("chat:room:")
        .or_else(|| topic.strip_prefix("presence:room:"))
}

impl Presence {
    pub fn new(
        pubsub: Arc<PubSub>,
        metrics: Arc<Metrics>,
        broadcast_period: Duration,
        outlet: Option<Outlet>,
    ) -> Presence {
        Presence {
            inner: Mutex::default(),
            tracker: RwLock::new(None),
            broadcast_period,
            pubsub,
            metrics,
            outlet,
        }
    }

    /// The tracker that times flushes (`None` while it restarts: flushes happen
    /// inline then). A new tracker picks up whatever is pending.
    pub(crate) fn set_tracker(&self, tracker: Option<ActorRef<PresenceMsg>>) {
        let restarted = tracker.is_some();
        *self.tracker.write() = tracker;
        if restarted {
            self.flush();
        }
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
            origin: None,
        };
        let state = {
            let mut inner = self.inner.lock();
            // A re-track of the same join replaces the old entry.
            let old = inner.table.remove(topic, session);
            inner.table.insert(topic, entry.clone());
            let entries = inner.table.topics.get(topic).map_or(0, Vec::len);
            let state = match inner.snapshots.get(topic) {
                Some(state) if entries >= SNAPSHOT_MIN_ENTRIES => state.clone(),
                _ => {
                    let state: Arc<str> = inner.table.list(topic).to_string().into();
                    inner.snapshots.insert(topic.to_string(), state.clone());
                    state
                }
            };
            self.queue(&mut inner, topic, vec![entry], old);
            state
        };
        let frame = phoenix::encode_raw(
            target.vsn,
            target.join_ref.as_deref(),
            None,
            topic,
            "presence_state",
            &state,
        );
        offer(&target.outbox, frame, &self.metrics);
        self.after_change();
    }

    /// Replace fields of the session's meta in `topic` (e.g. `status`).
    pub fn update(&self, topic: &str, session: SessionId, changes: &Map<String, Value>) {
        {
            let mut inner = self.inner.lock();
            let (mut joins, mut leaves) = (Vec::new(), Vec::new());
            for e in inner
                .table
                .topics
                .get_mut(topic)
                .into_iter()
                .flatten()
                .filter(|e| e.origin.is_none() && e.session == session)
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
            self.queue(&mut inner, topic, joins, leaves);
        }
        self.after_change();
    }

    /// The session left `topic`.
    pub fn untrack(&self, topic: &str, session: SessionId) {
        {
            let mut inner = self.inner.lock();
            let gone = inner.table.remove(topic, session);
            self.queue(&mut inner, topic, Vec::new(), gone);
        }
        self.after_change();
    }

    /// The session is gone: remove it from every topic.
    pub fn untrack_session(&self, session: SessionId) {
        {
            let mut inner = self.inner.lock();
            let topics = inner
                .table
                .by_session
                .get(&session)
                .cloned()
                .unwrap_or_default();
            for topic in topics {
                let gone = inner.table.remove(&topic, session);
                self.queue(&mut inner, &topic, Vec::new(), gone);
            }
        }
        self.after_change();
    }

    /// The state of one topic, as sent in `presence_state`.
    pub fn list(&self, topic: &str) -> Value {
        self.inner.lock().table.list(topic)
    }

    /// Add a change to the topic's pending diff.
    fn queue(&self, inner: &mut Inner, topic: &str, joins: Vec<Entry>, leaves: Vec<Entry>) {
        self.metrics.presences.set(inner.table.len as i64);
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let (j, l) = inner.pending.entry(topic.to_string()).or_default();
        j.extend(joins);
        l.extend(leaves);
    }

    /// Schedule a flush (or flush now when batching is off or the tracker is away).
    fn after_change(&self) {
        let schedule = {
            let mut inner = self.inner.lock();
            if inner.flush_scheduled || inner.pending.is_empty() {
                return;
            }
            inner.flush_scheduled = true;
            !self.broadcast_period.is_zero()
        };
        let tracker = self.tracker.read().clone();
        match tracker.filter(|_| schedule) {
            Some(t) => {
                t.send_after(self.broadcast_period, || PresenceMsg::Flush);
            }
            None => self.flush(),
        }
    }

    /// Broadcast every pending diff; their topics' snapshots are now stale.
    pub fn flush(&self) {
        let (pending, updates) = {
            let mut inner = self.inner.lock();
            inner.flush_scheduled = false;
            let pending = std::mem::take(&mut inner.pending);
            for topic in pending.keys() {
                inner.snapshots.remove(topic);
            }
            let updates = match &self.outlet {
                Some(_) => {
                    let inner = &mut *inner;
                    user_updates(&inner.table, &pending, &mut inner.published)
                }
                None => Vec::new(),
            };
            // This node's own changes go to the other nodes, numbered under the
            // lock so deltas and full states leave in the order they happened.
            if let Some(cluster) = self.pubsub.cluster() {
                for (topic, (joins, leaves)) in &pending {
                    remote::replicate(cluster, topic, joins, leaves);
                }
            }
            (pending, updates)
        };
        for (topic, (joins, leaves)) in pending {
            let payload = json!({"joins": group(&joins), "leaves": group(&leaves)});
            // To this node's clients: every node sends its clients the diffs of
            // every node's presences (the others' come from replication).
            self.pubsub.broadcast_local(&topic, DIFF, &payload, None);
        }
        if let Some(outlet) = &self.outlet {
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            for (topic, user_id, status) in updates {
                let Some(room) = room_of(&topic) else {
                    continue;
                };
                let payload = json!({
                    "user_id": user_id, "room_id": room, "status": status,
                    "timestamp": now, "topic": topic,
                });
                if let Value::Object(payload) = payload {
                    outlet.emit(crate::bus::events::PRESENCE_UPDATE, payload);
                }
            }
        }
    }
}

/// Per user, what a flush changes: `(topic, user_id, status)` for each user whose
/// status in a room differs from the last one published — their latest
/// connection's status, or `offline` when their last connection left (a user with
/// two tabs who closes one has not changed). Decided from the table after the
/// changes, so a join and a leave within one flush end as what is true now.
fn user_updates(
    table: &Table,
    pending: &HashMap<String, (Vec<Entry>, Vec<Entry>)>,
    published: &mut HashMap<String, HashMap<String, String>>,
) -> Vec<(String, String, String)> {
    let mut updates = Vec::new();
    for (topic, (joins, leaves)) in pending {
        if room_of(topic).is_none() {
            continue;
        }
        // Users of this node only: each node speaks for its own connections.
        let touched: std::collections::HashSet<&str> = joins
            .iter()
            .chain(leaves)
            .filter(|e| e.origin.is_none())
            .map(|e| e.key.as_str())
            .collect();
        let mut now: HashMap<&str, &str> = HashMap::new();
        for e in table.topics.get(topic).into_iter().flatten() {
            if touched.contains(e.key.as_str()) {
                let status = e.meta.get("status").and_then(Value::as_str);
                now.insert(e.key.as_str(), status.unwrap_or("online"));
            }
        }
        let last = published.entry(topic.clone()).or_default();
        for key in touched {
            let status = now.get(key).copied().unwrap_or("offline");
            if last.get(key).map(String::as_str) == Some(status) {
                continue;
            }
            if status == "offline" {
                if last.remove(key).is_none() {
                    continue; // joined and left unseen: nothing to say
                }
            } else {
                last.insert(key.to_string(), status.to_string());
            }
            updates.push((topic.clone(), key.to_string(), status.to_string()));
        }
        if last.is_empty() {
            published.remove(topic);
        }
    }
    updates
}

/// The presence tracker actor: the timer of presence flushes.
pub struct PresenceTracker;

pub enum PresenceMsg {
    /// Broadcast the diffs gathered since the last flush.
    Flush,
}

impl Actor for PresenceTracker {
    type Msg = PresenceMsg;
    type State = Arc<Presence>;
    type Arguments = Arc<Presence>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        presence: Arc<Presence>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(presence)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: PresenceMsg,
        presence: &mut Arc<Presence>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PresenceMsg::Flush => presence.flush(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        presence: &mut Arc<Presence>,
    ) -> Result<(), ActorProcessingErr> {
        // Nothing gathered is lost on a stop.
        presence.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Subscriber;
    use crate::pubsub::outbox::{Outbound, OutboxReceiver, channel};

    /// Presence batching over `period`, with a tracker or without one, and one
    /// subscriber of "room" (session 1) to watch what it sends.
    async fn presence(
        period: Duration,
        with_tracker: bool,
    ) -> (Arc<Presence>, Outbox, OutboxReceiver) {
        let metrics = Arc::new(Metrics::new());
        let pubsub = Arc::new(PubSub::new(metrics.clone(), None));
        let (outbox, rx) = channel(16);
        let sub = Subscriber {
            session: 1,
            vsn: Vsn::V2,
            outbox: outbox.clone(),
        };
        pubsub.subscribe("room", sub);
        let presence = Arc::new(Presence::new(pubsub, metrics, period, None));
        if with_tracker {
            let (actor, _) = Actor::spawn(None, PresenceTracker, presence.clone())
                .await
                .unwrap();
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
        let (presence, outbox, mut rx) = presence(Duration::ZERO, true).await;
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
        assert_eq!(presence.inner.lock().table.len, 0);
    }

    #[tokio::test]
    async fn changes_within_the_period_are_one_diff() {
        let (presence, outbox, mut rx) = presence(Duration::from_millis(50), true).await;
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
    async fn big_topics_share_one_encoded_state_per_flush() {
        let (presence, _outbox, _rx) = presence(Duration::from_secs(3600), true).await;
        let (joiner, mut joiner_rx) = channel(4);
        for session in 10..(10 + SNAPSHOT_MIN_ENTRIES as u64) {
            presence.track(
                "room",
                session,
                &format!("u{session}"),
                online(),
                target(&joiner),
            );
            while joiner_rx.try_recv().is_some() {}
        }
        // Full enough: the next two joiners get the same bytes, without themselves.
        presence.track("room", 1000, "late1", online(), target(&joiner));
        let first = joiner_rx.try_recv().unwrap();
        presence.track("room", 1001, "late2", online(), target(&joiner));
        let second = joiner_rx.try_recv().unwrap();
        assert_eq!(first.as_str(), second.as_str());
        assert!(!first.as_str().contains("late2"));
        // A flush makes the next state fresh.
        presence.flush();
        presence.track("room", 1002, "late3", online(), target(&joiner));
        let third = joiner_rx.try_recv().unwrap();
        assert!(third.as_str().contains("late2") && third.as_str().contains("late3"));
    }

    #[tokio::test]
    async fn without_a_tracker_diffs_go_out_directly() {
        let (presence, outbox, mut rx) = presence(Duration::from_millis(50), false).await;
        presence.track("room", 1, "alice", online(), target(&outbox));
        assert_eq!(next(&mut rx).await[3], "presence_state");
        assert_eq!(next(&mut rx).await[3], "presence_diff");
        presence.untrack("room", 1);
        let diff = next(&mut rx).await;
        assert!(diff[4]["leaves"].get("alice").is_some(), "{diff}");
    }
}
