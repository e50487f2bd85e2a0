//! Per-topic history: offsets, epochs and a bounded ring of recent broadcasts, for
//! missed-message recovery (as Centrifugo does) on top of the Phoenix protocol.
//!
//! Every offset-carrying broadcast (`new_message`, `new_comment`) is numbered under
//! its topic's lock, kept in the topic's ring when a rule gives it history, and
//! fanned out under the same lock, so every subscriber sees offsets in order.
//!
//! A join is made atomic with the same lock: subscribe, reply `{offset, epoch,
//! recovered?}`, queue the missed messages, release. No broadcast can fall between
//! the reply and the missed messages (no gap) or be both missed and live (no
//! duplicate).
//!
//! ```text
//! join payload   {"since": {"offset": 41, "epoch": "3f9c0a1b"}}
//! join reply     {"offset": 45, "epoch": "3f9c0a1b", "recovered": true}   then offsets 42..=45
//!                {"offset": 45, "epoch": "77e1d0c2", "recovered": false}  the client reloads
//! ```
//! The epoch is random per topic history: it changes whenever the history is lost
//! (a node restart, a topic forgotten after `idle_ttl_s`).
//!
//! With a database ([`Persist`]) the history survives both: a topic's epoch, head
//! and newest messages are read from it the first time the node touches the topic,
//! and every message is written before it is broadcast (see [`History::publish_any`]):
//! numbered and handed to the batched writer under the topic's lock, broadcast in
//! offset order once its batch committed.
//!
//! In a cluster (`REDIS_URL`) the history is shared instead, in Redis (see
//! [`History::publish_any`] and [`History::join_any`]): offsets are numbered by
//! Redis, kept messages live there, and a join on any node recovers from them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::HistoryConfig;
use crate::protocols::phoenix::{self, Frame};
use crate::pubsub::{PubSub, Subscriber, offer};
use crate::store::writer::Status;
use crate::store::{Store, StoredMessage, Writer};

/// The database behind the history, when `database.url` is not `off`.
pub struct Persist {
    pub store: Arc<Store>,
    pub writer: Writer,
    /// Most messages one page gives.
    pub page_max: usize,
}

/// Why a message could not be published, or a page read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistoryError {
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

/// A publish waiting for its commit. Should its publisher go away meanwhile (its
/// session ended), dropping it still broadcasts what the commit settles, and frees
/// its idempotency key: a message is never left committed and unsent.
struct Publishing {
    t: Arc<Mutex<TopicHistory>>,
    pubsub: Arc<PubSub>,
    topic: Arc<str>,
    status: Status,
    key: Option<(String, String)>,
    done: bool,
}

impl Publishing {
    /// Broadcast what is settled, free the key, and keep `reply` for retries.
    fn finish(mut self, reply: Option<&Value>) {
        self.done = true;
        let mut h = self.t.lock();
        h.flush(&self.pubsub, &self.topic);
        if let Some(key) = self.key.take() {
            h.inflight.remove(&key);
            if let Some(reply) = reply {
                h.remember(Some((&key.0, &key.1)), reply);
            }
        }
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (t, pubsub, topic) = (self.t.clone(), self.pubsub.clone(), self.topic.clone());
        let (status, key) = (self.status.clone(), self.key.take());
        runtime.spawn(async move {
            // Until its own batch is settled (the writer gives up within its timeout).
            while status.committed().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut h = t.lock();
            h.flush(&pubsub, &topic);
            if let Some(key) = key {
                h.inflight.remove(&key);
            }
        });
    }
}

/// A message numbered and handed to the database, not yet broadcast.
struct Pending {
    offset: u64,
    event: Arc<str>,
    payload: Arc<Value>,
    status: Status,
}

/// A client's position in a topic, from `since` in its join payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

impl Since {
    /// `since` from a join payload: `None` when the join does not ask to recover.
    /// A malformed `since` is a position that cannot be recovered (the reply says
    /// `recovered: false`), not silence.
    pub fn from_join(payload: &Value) -> Option<Since> {
        let since = payload.get("since").filter(|v| !v.is_null())?;
        Some(serde_json::from_value(since.clone()).unwrap_or(Since {
            offset: u64::MAX,
            epoch: String::new(),
        }))
    }
}

struct Entry {
    offset: u64,
    event: Arc<str>,
    payload: Arc<Value>,
    at: Instant,
}

struct TopicHistory {
    /// Replies of recent pushes by (user, idempotency key), and when they were made.
    replies: std::collections::HashMap<(String, String), Value>,
    reply_order: VecDeque<((String, String), Instant)>,
    epoch: String,
    /// Offset of the newest broadcast (0: none yet).
    head: u64,
    /// With a database: the newest offset given out (some may still be pending).
    numbered: u64,
    /// With a database: messages waiting for their commit, in offset order.
    pending: VecDeque<Pending>,
    /// With a database: idempotency keys of pushes still being stored.
    inflight: std::collections::HashSet<(String, String)>,
    /// With a database: epoch, head and recent messages were read from it.
    loaded: bool,
    ring: VecDeque<Entry>,
    size: usize,
    ttl: Duration,
    last_used: Instant,
}

impl TopicHistory {
    /// The first reply of a push repeating `idempotency` within `window`, if any.
    fn repeated(&mut self, idempotency: Option<(&str, &str)>, window: Duration) -> Option<Value> {
        let (user, key) = idempotency?;
        self.expire_replies(Instant::now(), window);
        self.replies
            .get(&(user.to_string(), key.to_string()))
            .cloned()
    }

    /// Keep `reply` for retries of the push that carried `idempotency`.
    fn remember(&mut self, idempotency: Option<(&str, &str)>, reply: &Value) {
        if let Some((user, key)) = idempotency {
            let id = (user.to_string(), key.to_string());
            self.replies.insert(id.clone(), reply.clone());
            self.reply_order.push_back((id, Instant::now()));
        }
    }

    fn expire_replies(&mut self, now: Instant, window: Duration) {
        while let Some((key, at)) = self.reply_order.front() {
            if now.duration_since(*at) <= window {
                break;
            }
            self.replies.remove(key);
            self.reply_order.pop_front();
        }
    }

    /// Keep a broadcast message in the ring (if the topic keeps any).
    fn keep(&mut self, offset: u64, event: Arc<str>, payload: Arc<Value>, now: Instant) {
        if self.size == 0 {
            return;
        }
        self.expire(now);
        if self.ring.len() == self.size {
            self.ring.pop_front();
        }
        self.ring.push_back(Entry {
            offset,
            event,
            payload,
            at: now,
        });
    }

    /// Broadcast, in offset order, the pending messages whose commit is known, up
    /// to the first still pending; drop those that failed (their publishers got an
    /// error). Run by each publisher once its own batch is settled, so the last
    /// batch to settle sends whatever waited for it.
    fn flush(&mut self, pubsub: &PubSub, topic: &str) {
        let now = Instant::now();
        while let Some(front) = self.pending.front() {
            let Some(committed) = front.status.committed() else {
                break; // an earlier batch still commits: its publisher flushes after it
            };
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if committed {
                pubsub.broadcast(topic, &p.event, &p.payload, None);
                self.head = p.offset;
                self.keep(p.offset, p.event, p.payload, now);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .ring
            .front()
            .is_some_and(|e| now.duration_since(e.at) > self.ttl)
        {
            self.ring.pop_front();
        }
    }

    /// The messages after `since`, or `None` when they cannot all be given.
    fn after(&self, since: &Since) -> Option<Vec<&Entry>> {
        if since.epoch != self.epoch || since.offset > self.head {
            return None;
        }
        if since.offset == self.head {
            return Some(Vec::new());
        }
        // The first missed message must still be in the ring.
        let first = self.ring.front()?.offset;
        if since.offset + 1 < first {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|e| e.offset > since.offset)
                .collect(),
        )
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// Numbered, kept and broadcast.
    New { offset: u64, reply: Value },
    /// A retry of a push already published: its first reply, nothing sent.
    Duplicate { reply: Value },
}

impl Published {
    pub fn reply(self) -> Value {
        match self {
            Published::New { reply, .. } | Published::Duplicate { reply } => reply,
        }
    }
}

/// The outcome of a join, for its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinState {
    pub offset: u64,
    pub epoch: String,
    /// `Some` when the join asked to recover.
    pub recovered: Option<bool>,
    /// Messages queued after the reply.
    pub replayed: usize,
    /// The newest messages, oldest first, when the join asked for them.
    pub messages: Option<Vec<Value>>,
}

/// What a join asks of the history besides subscribing.
struct Ask<'a> {
    /// Recover what was missed since this position.
    since: Option<&'a Since>,
    /// Reply with the newest `last.0` messages: the ring's, after those of `last.1`
    /// (read from the database) that are older than the ring.
    last: Option<(usize, Vec<StoredMessage>)>,
}

/// `history.limit` of a join payload (`{"history": {"limit": 50}}`): the join asks
/// for the newest messages in its reply.
pub fn last_from_join(payload: &Value) -> Option<usize> {
    let limit = payload.get("history")?.get("limit")?.as_u64()?;
    Some(limit.min(u32::MAX as u64) as usize)
}

/// The row a published payload is kept as.
fn stored(topic: &str, event: &str, offset: u64, payload: &Arc<Value>) -> StoredMessage {
    let text = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_string);
    StoredMessage {
        msg_id: text("id").unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        topic: topic.to_string(),
        offset,
        event: event.to_string(),
        user_id: text("user_id").unwrap_or_default(),
        payload: payload.clone(),
        created_at_ms: crate::store::now_ms(),
    }
}

/// The newest `limit` of `older` (read from the database) followed by the ring,
/// which holds the newest of all.
fn newest(h: &TopicHistory, limit: usize, older: Vec<StoredMessage>) -> Vec<Value> {
    let first_kept = h.ring.front().map_or(u64::MAX, |e| e.offset);
    let mut out: Vec<Value> = older
        .into_iter()
        .filter(|m| m.offset < first_kept && m.offset <= h.head)
        .map(|m| Arc::unwrap_or_clone(m.payload))
        .collect();
    out.extend(h.ring.iter().map(|e| (*e.payload).clone()));
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    out
}

/// Every topic's history on this node.
pub struct History {
    topics: DashMap<Arc<str>, Arc<Mutex<TopicHistory>>>,
    config: HistoryConfig,
    pubsub: Arc<PubSub>,
    /// In a cluster: one publish at a time per topic from this node, so this
    /// node's own messages are numbered and delivered in the same order.
    gates: DashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>,
    persist: Option<Persist>,
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl History {
    pub fn new(config: HistoryConfig, pubsub: Arc<PubSub>, persist: Option<Persist>) -> History {
        History {
            topics: DashMap::new(),
            config,
            pubsub,
            gates: DashMap::new(),
            persist,
        }
    }

    /// The database, when messages are kept in one.
    pub fn persist(&self) -> Option<&Persist> {
        self.persist.as_ref()
    }

    /// The database, or why there is none.
    fn persisted(&self) -> Result<&Persist, HistoryError> {
        self.persist.as_ref().ok_or_else(|| {
            HistoryError::Unavailable("messages are not kept (database.url = \"off\")".into())
        })
    }

    /// (size, ttl) of the longest rule matching `topic`; no rule: offsets only.
    fn rule(&self, topic: &str) -> (usize, Duration) {
        self.config
            .rules
            .iter()
            .filter(|r| topic.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map(|r| (r.size, Duration::from_secs(r.ttl_s)))
            .unwrap_or((0, Duration::from_secs(self.config.idle_ttl_s)))
    }

    fn topic(&self, topic: &str) -> Arc<Mutex<TopicHistory>> {
        if let Some(t) = self.topics.get(topic) {
            return t.value().clone();
        }
        let (size, ttl) = self.rule(topic);
        self.topics
            .entry(Arc::from(topic))
            .or_insert_with(|| {
                Arc::new(Mutex::new(TopicHistory {
                    replies: Default::default(),
                    reply_order: VecDeque::new(),
                    epoch: new_epoch(),
                    head: 0,
                    numbered: 0,
                    pending: VecDeque::new(),
                    inflight: Default::default(),
                    loaded: false,
                    ring: VecDeque::with_capacity(size.min(16)),
                    size,
                    ttl,
                    last_used: Instant::now(),
                }))
            })
            .value()
            .clone()
    }

    /// Number the next broadcast of `topic`, keep it, and fan it out, in order.
    ///
    /// With an idempotency key (the pushing user's and the client's), a key seen
    /// within `history.idempotency_window_s` publishes nothing and gives back the
    /// first push's reply; `reply` builds the reply kept for such retries.
    pub fn publish(
        &self,
        topic: &str,
        event: &str,
        idempotency: Option<(&str, &str)>,
        payload: impl FnOnce(u64) -> Value,
        reply: impl FnOnce(&Value) -> Value,
    ) -> Published {
        let t = self.topic(topic);
        let mut h = t.lock();
        let now = Instant::now();
        let window = Duration::from_secs(self.config.idempotency_window_s);
        if let Some(reply) = h.repeated(idempotency, window) {
            return Published::Duplicate { reply };
        }
        h.head += 1;
        h.last_used = now;
        let offset = h.head;
        let payload = Arc::new(payload(offset));
        self.pubsub.broadcast(topic, event, &payload, None);
        h.keep(offset, Arc::from(event), payload.clone(), now);
        let reply = reply(&payload);
        h.remember(idempotency, &reply);
        Published::New { offset, reply }
    }

    /// Subscribe, queue the join reply built by `reply` from the topic's state,
    /// then the messages missed since `since`, all under the topic's lock.
    pub fn join(
        &self,
        topic: &str,
        subscriber: Subscriber,
        since: Option<&Since>,
        metrics: &crate::metrics::Metrics,
        reply: impl FnOnce(&JoinState) -> Frame,
    ) -> JoinState {
        let t = self.topic(topic);
        let ask = Ask { since, last: None };
        self.join_in(&t, topic, subscriber, ask, metrics, reply)
    }

    /// [`History::join`] on the topic `t`.
    fn join_in(
        &self,
        t: &Mutex<TopicHistory>,
        topic: &str,
        subscriber: Subscriber,
        ask: Ask<'_>,
        metrics: &crate::metrics::Metrics,
        reply: impl FnOnce(&JoinState) -> Frame,
    ) -> JoinState {
        let Ask { since, last } = ask;
        let mut h = t.lock();
        let now = Instant::now();
        h.expire(now);
        h.last_used = now;
        let missed = since.map(|s| h.after(s));
        let mut state = JoinState {
            offset: h.head,
            epoch: h.epoch.clone(),
            recovered: missed.as_ref().map(Option::is_some),
            replayed: 0,
            messages: last.map(|(limit, older)| newest(&h, limit, older)),
        };
        let replay: Vec<&Entry> = missed.flatten().unwrap_or_default();
        state.replayed = replay.len();
        let (outbox, vsn) = (subscriber.outbox.clone(), subscriber.vsn);
        self.pubsub.subscribe(topic, subscriber);
        offer(&outbox, reply(&state), metrics);
        for e in replay {
            let frame = phoenix::encode(vsn, None, None, topic, &e.event, &e.payload);
            offer(&outbox, frame, metrics);
        }
        state
    }

    /// Forget expired messages, and topics idle past their TTL with nothing kept
    /// and nobody subscribed (their epoch changes if they come back).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.topics.retain(|topic, t| {
            let mut h = t.lock();
            h.expire(now);
            h.expire_replies(now, Duration::from_secs(self.config.idempotency_window_s));
            let idle = now.duration_since(h.last_used)
                > h.ttl.max(Duration::from_secs(self.config.idle_ttl_s));
            !(h.ring.is_empty() && idle && self.pubsub.subscriber_count(topic) == 0)
        });
        // A gate nobody holds, of a topic forgotten.
        self.gates
            .retain(|topic, g| self.topics.contains_key(topic) || Arc::strong_count(g) > 1);
    }

    /// Topics with a history entry.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

impl History {
    fn gate(&self, topic: &str) -> Arc<tokio::sync::Mutex<()>> {
        if let Some(g) = self.gates.get(topic) {
            return g.clone();
        }
        self.gates.entry(Arc::from(topic)).or_default().clone()
    }

    /// The topic, its epoch, head and recent messages read from the database the
    /// first time (with no database: the topic as it is).
    async fn loaded(&self, topic: &str) -> Result<Arc<Mutex<TopicHistory>>, HistoryError> {
        let t = self.topic(topic);
        let Some(persist) = &self.persist else {
            return Ok(t);
        };
        if t.lock().loaded {
            return Ok(t);
        }
        let gate = self.gate(topic);
        let _one_at_a_time = gate.lock().await;
        let (loaded, size) = {
            let h = t.lock();
            (h.loaded, h.size)
        };
        if loaded {
            return Ok(t);
        }
        // In a cluster the recent messages are Redis's; only epoch and head are read.
        let recent = if self.pubsub.cluster().is_some() {
            0
        } else {
            size
        };
        let state = persist
            .store
            .topic_state(topic, &new_epoch(), recent)
            .await
            .map_err(|e| {
                persist
                    .store
                    .metrics
                    .store_errors
                    .with_label_values(&["load"])
                    .inc();
                HistoryError::Unavailable(e.to_string())
            })?;
        let (now, now_ms) = (Instant::now(), crate::store::now_ms());
        let mut guard = t.lock();
        let h = &mut *guard;
        h.epoch = state.epoch;
        h.head = h.head.max(state.head);
        h.numbered = h.numbered.max(h.head);
        for m in state.recent {
            let age = Duration::from_millis(now_ms.saturating_sub(m.created_at_ms).max(0) as u64);
            let at = now.checked_sub(age).unwrap_or(now);
            h.ring.push_back(Entry {
                offset: m.offset,
                event: Arc::from(m.event.as_str()),
                payload: m.payload,
                at,
            });
        }
        h.expire(now);
        h.loaded = true;
        drop(guard);
        Ok(t)
    }

    /// In a cluster, what Redis starts a topic's shared history from when it has
    /// none. With a database it is asked first (`None`: Redis answers
    /// [`NoHistory`](crate::cluster::ClusterError::NoHistory) if it has none) and
    /// then [`History::stored_seed`]; without one, a new epoch at 0.
    fn first_seed(&self) -> Option<crate::cluster::Seed> {
        self.persist.is_none().then(|| crate::cluster::Seed {
            epoch: new_epoch(),
            head: 0,
        })
    }

    /// The database's epoch and head of `topic`, read now (so offsets continue
    /// after whatever any node stored), for Redis to start its history from.
    async fn stored_seed(&self, topic: &str) -> crate::cluster::Seed {
        if let Some(p) = &self.persist {
            match p.store.topic_state(topic, &new_epoch(), 0).await {
                Ok(state) => {
                    return crate::cluster::Seed {
                        epoch: state.epoch,
                        head: state.head,
                    };
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "no stored history to start Redis's from")
                }
            }
        }
        let head = self.topic(topic).lock().head;
        crate::cluster::Seed {
            epoch: new_epoch(),
            head,
        }
    }

    /// [`History::publish`] with the message written to the database first: it is
    /// numbered and handed to the writer under the topic's lock, and broadcast (in
    /// offset order) once committed; the reply waits for the commit.
    async fn publish_stored(
        &self,
        persist: &Persist,
        topic: &str,
        event: &str,
        idempotency: Option<(&str, &str)>,
        payload: impl FnOnce(u64) -> Value,
        reply: impl FnOnce(&Value) -> Value,
    ) -> Result<Published, HistoryError> {
        let t = self.loaded(topic).await?;
        let window = Duration::from_secs(self.config.idempotency_window_s);
        let key = idempotency.map(|(u, k)| (u.to_string(), k.to_string()));
        let (offset, payload, ticket) = {
            let mut h = t.lock();
            if let Some(reply) = h.repeated(idempotency, window) {
                return Ok(Published::Duplicate { reply });
            }
            if let Some(key) = &key
                && !h.inflight.insert(key.clone())
            {
                return Err(HistoryError::Unavailable(
                    "a push with this idempotency_key is still being stored; retry".into(),
                ));
            }
            let offset = h.numbered.max(h.head) + 1;
            h.numbered = offset;
            h.last_used = Instant::now();
            let payload = Arc::new(payload(offset));
            let ticket = persist
                .writer
                .submit(stored(topic, event, offset, &payload));
            h.pending.push_back(Pending {
                offset,
                event: Arc::from(event),
                payload: payload.clone(),
                status: ticket.status.clone(),
            });
            (offset, payload, ticket)
        };
        let publishing = Publishing {
            t: t.clone(),
            pubsub: self.pubsub.clone(),
            topic: Arc::from(topic),
            status: ticket.status.clone(),
            key,
            done: false,
        };
        match ticket.committed().await {
            Ok(()) => {
                let reply = reply(&payload);
                publishing.finish(Some(&reply));
                Ok(Published::New { offset, reply })
            }
            Err(reason) => {
                publishing.finish(None);
                Err(HistoryError::Unavailable(reason))
            }
        }
    }

    /// [`History::publish`], or in a cluster the same through Redis: the offset
    /// comes from Redis, which keeps the message and publishes it to every node in
    /// one step. With Redis unreachable, falls back to this node's numbering (a
    /// later recovery then says `recovered: false`: the epochs differ).
    ///
    /// With a database, the message is written before the reply (and on a single
    /// node before the broadcast); a failed write is an error for the publisher.
    pub async fn publish_any(
        &self,
        topic: &str,
        event: &str,
        idempotency: Option<(&str, &str)>,
        payload: impl FnOnce(u64) -> Value,
        reply: impl FnOnce(&Value) -> Value,
    ) -> Result<Published, HistoryError> {
        let Some(cluster) = self.pubsub.cluster().cloned() else {
            return match &self.persist {
                None => Ok(self.publish(topic, event, idempotency, payload, reply)),
                Some(p) => {
                    self.publish_stored(p, topic, event, idempotency, payload, reply)
                        .await
                }
            };
        };
        let gate = self.gate(topic);
        let one_at_a_time = gate.lock().await;
        let (size, ttl) = self.rule(topic);
        let window = Duration::from_secs(self.config.idempotency_window_s);
        if let Some(reply) = self.topic(topic).lock().repeated(idempotency, window) {
            return Ok(Published::Duplicate { reply });
        }
        let mut value = payload(0);
        let keep = crate::cluster::Keep {
            size,
            ttl_s: ttl.as_secs(),
            idle_ttl_s: self.config.idle_ttl_s,
        };
        let seed = self.first_seed();
        let mut numbered = cluster
            .publish_numbered(topic, event, &value, keep, seed.as_ref())
            .await;
        if matches!(numbered, Err(crate::cluster::ClusterError::NoHistory)) {
            let seed = self.stored_seed(topic).await;
            numbered = cluster
                .publish_numbered(topic, event, &value, keep, Some(&seed))
                .await;
        }
        let offset = match numbered {
            Ok((offset, _epoch)) => {
                crate::cluster::set_offset(&mut value, offset);
                let t = self.topic(topic);
                let mut h = t.lock();
                h.head = h.head.max(offset);
                drop(h);
                // Redis published it to the other nodes; this node delivers its own.
                self.pubsub.broadcast_local(topic, event, &value, None);
                offset
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "shared history unreachable: numbering locally");
                let t = self.topic(topic);
                let mut h = t.lock();
                h.head += 1;
                crate::cluster::set_offset(&mut value, h.head);
                self.pubsub.broadcast(topic, event, &value, None);
                h.head
            }
        };
        // Handed to the writer in this node's order; the next publish need not
        // wait for this one's commit.
        let ticket = self.persist.as_ref().map(|p| {
            p.writer
                .submit(stored(topic, event, offset, &Arc::new(value.clone())))
        });
        drop(one_at_a_time);
        if let Some(ticket) = ticket {
            ticket
                .committed()
                .await
                .map_err(HistoryError::Unavailable)?;
        }
        let reply = reply(&value);
        self.topic(topic).lock().remember(idempotency, &reply);
        Ok(Published::New { offset, reply })
    }

    /// The newest `limit` messages (capped at `database.page_max`) read from the
    /// database for a join's reply; `None` when not asked, or the read failed.
    async fn older(&self, topic: &str, last: Option<usize>) -> Option<(usize, Vec<StoredMessage>)> {
        let limit = last?;
        let Some(p) = &self.persist else {
            return Some((limit.min(self.rule(topic).0), Vec::new()));
        };
        let limit = limit.min(p.page_max);
        match p.store.messages_before(topic, None, limit).await {
            Ok(older) => Some((limit, older)),
            Err(e) => {
                p.store
                    .metrics
                    .store_errors
                    .with_label_values(&["read"])
                    .inc();
                tracing::warn!(topic, error = %e, "could not read history for a join");
                None
            }
        }
    }

    /// [`History::join`], or in a cluster the same from the shared history: what was
    /// broadcast while Redis is read is recorded (a tap) and queued after the
    /// recovered messages, so there is no gap and no duplicate.
    ///
    /// With `last`, the reply also carries the newest `last` messages.
    pub async fn join_any(
        &self,
        topic: &str,
        subscriber: Subscriber,
        since: Option<&Since>,
        last: Option<usize>,
        metrics: &crate::metrics::Metrics,
        reply: impl FnOnce(&JoinState) -> Frame,
    ) -> JoinState {
        let Some(cluster) = self.pubsub.cluster().cloned() else {
            // Topics that keep no messages (`user:*`, `presence:*`) are read from the
            // database only once something is published on them.
            let keeps = self.rule(topic).0 > 0 || last.is_some();
            let loaded = if keeps {
                self.loaded(topic).await
            } else {
                Ok(self.topic(topic))
            };
            let t = match loaded {
                Ok(t) => t,
                Err(e) => {
                    // Joined all the same; offsets continue once the database answers
                    // (with its epoch: a recovery from this one says recovered: false).
                    tracing::warn!(topic, error = %e, "join without the stored history");
                    self.topic(topic)
                }
            };
            let last = self.older(topic, last).await;
            return self.join_in(&t, topic, subscriber, Ask { since, last }, metrics, reply);
        };
        let messages = self.older(topic, last).await.map(|(limit, older)| {
            let skip = older.len().saturating_sub(limit);
            older
                .into_iter()
                .skip(skip)
                .map(|m| Arc::unwrap_or_clone(m.payload))
                .collect()
        });
        self.pubsub.tap(topic, subscriber.session);
        let (after, idle) = (since.map(|s| s.offset), self.config.idle_ttl_s);
        let seed = self.first_seed();
        let mut read = cluster
            .read_history(topic, after, seed.as_ref(), idle)
            .await;
        if matches!(read, Err(crate::cluster::ClusterError::NoHistory)) {
            let seed = self.stored_seed(topic).await;
            read = cluster.read_history(topic, after, Some(&seed), idle).await;
        }
        let (state, replay) = match read {
            Ok((head, epoch, kept)) => {
                let recovered = since.map(|s| {
                    s.epoch == epoch
                        && s.offset <= head
                        && (s.offset == head
                            || kept.first().is_some_and(|k| k.offset == s.offset + 1))
                });
                let replay = if recovered == Some(true) {
                    kept
                } else {
                    Vec::new()
                };
                let state = JoinState {
                    offset: head,
                    epoch,
                    recovered,
                    replayed: replay.len(),
                    messages,
                };
                (state, replay)
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "shared history unreachable: join without it");
                let state = JoinState {
                    offset: 0,
                    epoch: "unavailable".into(),
                    recovered: since.map(|_| false),
                    replayed: 0,
                    messages,
                };
                (state, Vec::new())
            }
        };
        let (outbox, vsn) = (subscriber.outbox.clone(), subscriber.vsn);
        let head = state.offset;
        self.pubsub.subscribe_with(topic, subscriber, |tapped| {
            offer(&outbox, reply(&state), metrics);
            for k in &replay {
                let frame = phoenix::encode(vsn, None, None, topic, &k.event, &k.payload);
                offer(&outbox, frame, metrics);
            }
            // Broadcast while Redis was read: what the reply's head already covers
            // was replayed (or is older than the client asked for); the rest follows.
            for (event, payload) in tapped {
                let offset = payload.get("offset").and_then(Value::as_u64);
                if offset.is_some_and(|o| o <= head) {
                    continue;
                }
                let frame = phoenix::encode(vsn, None, None, topic, &event, &payload);
                offer(&outbox, frame, metrics);
            }
        });
        state
    }

    /// A page of `topic`'s kept messages: up to `limit` (capped at
    /// `database.page_max`) with offsets below `before`, oldest first.
    pub async fn page(
        &self,
        topic: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        let p = self.persisted()?;
        p.store
            .messages_before(topic, before, limit.clamp(1, p.page_max))
            .await
            .map_err(|e| {
                p.store
                    .metrics
                    .store_errors
                    .with_label_values(&["read"])
                    .inc();
                HistoryError::Unavailable(e.to_string())
            })
    }

    /// Delete the message `msg_id` (moderation): from the database, from the
    /// recovery ring, and tell the topic `msg_deleted {id, offset}`. Its topic and
    /// offset, or `None` if no such message is kept.
    pub async fn delete(&self, msg_id: &str) -> Result<Option<(String, u64)>, HistoryError> {
        let p = self.persisted()?;
        let deleted = p.store.delete_message(msg_id).await.map_err(|e| {
            p.store
                .metrics
                .store_errors
                .with_label_values(&["delete"])
                .inc();
            HistoryError::Unavailable(e.to_string())
        })?;
        if let Some((topic, offset)) = &deleted {
            if let Some(t) = self.topics.get(topic.as_str()).map(|t| t.value().clone()) {
                let mut h = t.lock();
                h.ring.retain(|e| e.offset != *offset);
                // Committed but not yet broadcast: it never will be.
                h.pending.retain(|p| p.offset != *offset);
            }
            if let Some(cluster) = self.pubsub.cluster()
                && let Err(e) = cluster.forget(topic, *offset).await
            {
                tracing::warn!(topic, offset, error = %e, "could not drop a deleted message from the shared history");
            }
            self.pubsub.broadcast(
                topic,
                "msg_deleted",
                &json!({"id": msg_id, "offset": offset}),
                None,
            );
        }
        Ok(deleted)
    }
}

/// Merge the join state into a channel's join response (an object).
pub fn join_response(mut response: Value, state: &JoinState) -> Value {
    if let Value::Object(map) = &mut response {
        map.insert("offset".into(), json!(state.offset));
        map.insert("epoch".into(), json!(state.epoch));
        if let Some(recovered) = state.recovered {
            map.insert("recovered".into(), json!(recovered));
        }
        if let Some(messages) = &state.messages {
            map.insert("messages".into(), json!(messages));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryRule;
    use crate::metrics::Metrics;
    use crate::protocols::phoenix::Vsn;
    use crate::pubsub::outbox::{self, OutboxReceiver};

    fn history(size: usize, ttl_s: u64) -> History {
        let config = HistoryConfig {
            rules: vec![HistoryRule {
                prefix: "chat:".into(),
                size,
                ttl_s,
            }],
            idle_ttl_s: 600,
            sweep_interval_s: 30,
            idempotency_window_s: 120,
        };
        History::new(
            config,
            Arc::new(PubSub::new(Arc::new(Metrics::new()), None)),
            None,
        )
    }

    /// Publish `{offset}`, replying with the payload itself.
    fn post(h: &History, topic: &str, event: &str, key: Option<(&str, &str)>) -> Published {
        h.publish(topic, event, key, |o| json!({ "offset": o }), |p| p.clone())
    }

    fn frames(rx: &mut OutboxReceiver) -> Vec<Value> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect()
    }

    fn join(h: &History, session: u64, since: Option<Since>) -> (JoinState, OutboxReceiver) {
        let (outbox, rx) = outbox::channel(256);
        let sub = Subscriber {
            session,
            vsn: Vsn::V2,
            outbox,
        };
        let metrics = Metrics::new();
        let state = h.join("chat:1", sub, since.as_ref(), &metrics, |s| {
            phoenix::reply(
                Vsn::V2,
                Some("1"),
                Some("1"),
                "chat:1",
                true,
                join_response(json!({}), s),
            )
        });
        (state, rx)
    }

    #[test]
    fn recovers_exactly_the_missed_messages_after_the_reply() {
        let h = history(100, 600);
        for _ in 1..=5 {
            post(&h, "chat:1", "new_message", None);
        }
        let (state, _) = join(&h, 1, None);
        assert_eq!((state.offset, state.recovered), (5, None));
        let since = Since {
            offset: 2,
            epoch: state.epoch.clone(),
        };
        let (state, mut rx) = join(&h, 2, Some(since));
        assert_eq!((state.recovered, state.replayed), (Some(true), 3));
        let got = frames(&mut rx);
        assert_eq!(got[0][3], "phx_reply");
        assert_eq!(got[0][4]["response"]["recovered"], true);
        let offsets: Vec<u64> = got[1..]
            .iter()
            .map(|f| f[4]["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        // Live broadcasts follow, continuing the sequence.
        post(&h, "chat:1", "new_message", None);
        assert_eq!(frames(&mut rx)[0][4]["offset"], 6);
    }

    #[test]
    fn a_malformed_since_asks_to_recover_and_cannot() {
        let h = history(100, 600);
        post(&h, "chat:1", "new_message", None);
        for payload in [
            json!({"since": {"offset": "3", "epoch": "x"}}),
            json!({"since": {"offset": 0}}),
        ] {
            let since = Since::from_join(&payload);
            assert!(since.is_some(), "{payload}");
            let (state, _) = join(&h, 9, since);
            assert_eq!(state.recovered, Some(false), "{payload}");
        }
        assert_eq!(Since::from_join(&json!({"since": null})), None);
        assert_eq!(Since::from_join(&json!({})), None);
    }

    #[test]
    fn stale_epoch_or_evicted_offsets_do_not_recover() {
        let h = history(3, 600);
        for _ in 0..10 {
            post(&h, "chat:1", "new_message", None);
        }
        let (state, _) = join(
            &h,
            1,
            Some(Since {
                offset: 9,
                epoch: "other".into(),
            }),
        );
        assert_eq!((state.recovered, state.offset), (Some(false), 10));
        let epoch = state.epoch.clone();
        // Offsets 8..=10 are kept: since 7 can recover, since 6 cannot.
        let (state, _) = join(
            &h,
            2,
            Some(Since {
                offset: 7,
                epoch: epoch.clone(),
            }),
        );
        assert_eq!((state.recovered, state.replayed), (Some(true), 3));
        let (state, _) = join(
            &h,
            3,
            Some(Since {
                offset: 6,
                epoch: epoch.clone(),
            }),
        );
        assert_eq!(state.recovered, Some(false));
        let (state, _) = join(&h, 4, Some(Since { offset: 11, epoch }));
        assert_eq!(state.recovered, Some(false), "an offset from the future");
    }

    #[test]
    fn topics_without_a_rule_keep_offsets_but_no_messages() {
        let h = history(100, 600);
        post(&h, "comments:1", "new_comment", None);
        let published = post(&h, "comments:1", "new_comment", None);
        assert!(matches!(published, Published::New { offset: 2, .. }));
        let (outbox, _rx) = outbox::channel(8);
        let sub = Subscriber {
            session: 1,
            vsn: Vsn::V2,
            outbox,
        };
        let epoch = h.topic("comments:1").lock().epoch.clone();
        let state = h.join(
            "comments:1",
            sub,
            Some(&Since { offset: 1, epoch }),
            &Metrics::new(),
            |_| Frame::from("x"),
        );
        assert_eq!(state.recovered, Some(false));
    }

    #[test]
    fn a_retried_key_publishes_once_and_gets_the_first_reply() {
        let h = history(100, 600);
        let (outbox, mut rx) = outbox::channel(16);
        h.pubsub.subscribe(
            "chat:1",
            Subscriber {
                session: 1,
                vsn: Vsn::V2,
                outbox,
            },
        );
        let first = post(&h, "chat:1", "new_message", Some(("alice", "k1")));
        let retry = post(&h, "chat:1", "new_message", Some(("alice", "k1")));
        assert_eq!(
            retry,
            Published::Duplicate {
                reply: json!({"offset": 1})
            }
        );
        assert_eq!(first.reply(), json!({"offset": 1}));
        // Another user's same key is another message.
        let other = post(&h, "chat:1", "new_message", Some(("bob", "k1")));
        assert!(matches!(other, Published::New { offset: 2, .. }));
        assert_eq!(
            frames(&mut rx).len(),
            2,
            "one broadcast per message, none for the retry"
        );
    }

    #[test]
    fn sweep_forgets_idle_empty_topics_with_a_new_epoch_after() {
        let h = history(100, 0);
        post(&h, "chat:9", "new_message", None);
        let epoch = h.topic("chat:9").lock().epoch.clone();
        std::thread::sleep(Duration::from_millis(5));
        let h = History {
            config: HistoryConfig {
                idle_ttl_s: 0,
                ..h.config.clone()
            },
            ..h
        };
        h.sweep();
        assert_eq!(h.topic_count(), 0);
        assert_ne!(h.topic("chat:9").lock().epoch, epoch);
    }
}
