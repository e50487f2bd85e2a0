//! Cluster: nodes behind a load balancer share their broadcasts through Redis
//! pub/sub (`fred`), when `cluster.redis_url` (`REDIS_URL`) is set.
//!
//! ```text
//! armoricore:t:{topic}   one Redis channel per topic, subscribed by a node while it
//!                        has a local subscriber of the topic (SUBSCRIBE on the
//!                        first, UNSUBSCRIBE after the last); a broadcast is
//!                        published once per node: {"n": node_id, "e": event, "p": payload}
//! armoricore:nodes       heartbeats {"n": node_id, "p": {"seq", "s"}} every
//!                        cluster.heartbeat_ms: who is alive (armoricore_cluster_nodes),
//!                        and a summary of each node ("s") for the dashboard
//! armoricore:presence    presence replication (see `tracker`)
//! armoricore:h:{topic}   shared history: head and epoch (hash), and the kept
//! armoricore:hm:{topic}  messages by offset (sorted set); see PUBLISH_SCRIPT
//! armoricore:lease:{name} which node holds a cluster-wide name (a call), with a TTL
//! ```
//!
//! A node delivers what others publish to its local subscribers (skipping its own
//! messages, which it delivered itself). Redis keeps the order of one connection's
//! publishes, and each node publishes through one connection in the order of its
//! broadcasts, so clients see each publisher's messages in order.
//!
//! Redis down: local delivery goes on, remote broadcasts wait in a bounded buffer
//! (`cluster.buffer_messages`, then dropped and counted), the clients reconnect
//! with backoff and resubscribe, `/ready` says `degraded`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, LuaInterface, PubsubInterface};
use fred::types::Builder;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod tracker;

use crate::actors::presence::Presence;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::pubsub::PubSub;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Redis URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis unreachable")]
    Unavailable,
    /// Redis keeps no history for the topic (new, expired, or Redis restarted) and
    /// the caller gave no [`Seed`] to start it from: ask again with one.
    #[error("no shared history for the topic yet")]
    NoHistory,
}

/// Longest wait for a history script: a join or a publish does not hang on Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// A broadcast as it crosses Redis.
#[derive(Serialize)]
struct Outgoing<'a> {
    n: &'a str,
    e: &'a str,
    p: &'a Value,
}

#[derive(Deserialize)]
struct Incoming {
    n: String,
    e: String,
    p: Value,
    /// The offset a history message was given in Redis (see `history.rs`).
    #[serde(default)]
    o: Option<u64>,
}

/// Number a message, keep it (trimmed to the topic's size) and publish it to every
/// node, in one atomic step, so offsets are the order Redis saw and a kept message
/// is always one that was published.
///
/// KEYS: head hash, messages zset. ARGV: message JSON `{"n","e","p"}`, size, the
/// epoch and (ARGV[7]) the head a new history starts from (empty: do nothing and
/// return `{0, ''}`, so the caller reads them from its database), message TTL (s),
/// head TTL (s), channel. Returns `{offset, epoch}`.
const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  if ARGV[3] == '' then
    return {0, ''}
  end
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', ARGV[7])
end
local offset = redis.call('HINCRBY', KEYS[1], 'head', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
local msg = '{"o":' .. offset .. ',' .. string.sub(ARGV[1], 2)
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('ZADD', KEYS[2], offset, msg)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(size + 1))
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[6], msg)
return {offset, epoch}
"#;

/// A topic's head, epoch (created if new) and the messages after ARGV[1] (none if
/// empty). KEYS: head hash, messages zset. ARGV: after, the epoch and (ARGV[4]) the
/// head a new history starts from (empty: return `{'', '', {}}`), head TTL (s).
const READ_SCRIPT: &str = r#"
local head = redis.call('HGET', KEYS[1], 'head')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  if ARGV[2] == '' then
    return {'', '', {}}
  end
  epoch = ARGV[2]
  head = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', head)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local msgs = {}
if ARGV[1] ~= '' then
  msgs = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
end
return {tostring(head or 0), epoch, msgs}
"#;

/// What a topic's shared history starts from when Redis has none (first use,
/// expired when idle, Redis restarted): a new random epoch and 0, or the database's
/// epoch and head, read when Redis says it has none ([`ClusterError::NoHistory`]).
#[derive(Debug, Clone)]
pub struct Seed {
    pub epoch: String,
    pub head: u64,
}

/// How a topic's shared history is kept: messages, their TTL, the head's TTL.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub size: usize,
    pub ttl_s: u64,
    pub idle_ttl_s: u64,
}

/// A message kept in the shared history.
pub struct Kept {
    pub offset: u64,
    pub event: String,
    pub payload: Value,
}

/// Put `offset` into a payload that carries one (`new_message`, `new_comment`).
pub fn set_offset(payload: &mut Value, offset: u64) {
    if let Some(slot) = payload.get_mut("offset") {
        *slot = Value::from(offset);
    }
}

/// Subscription changes, applied in order by one task.
enum Interest {
    Watch(String),
    Unwatch(String),
}

/// What the tasks started by [`Cluster::start`] read from.
type Receivers = (
    mpsc::Receiver<(String, Bytes)>,
    mpsc::Receiver<(String, Bytes)>,
    mpsc::UnboundedReceiver<Interest>,
);

/// Control messages waiting while Redis is away (heartbeats, presence changes).
const CONTROL_QUEUE: usize = 65_536;

/// This machine's host name (Linux), for default node names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "armoricore".into())
}

/// This node's link to the others.
pub struct Cluster {
    pub node_id: String,
    config: ClusterConfig,
    metrics: Arc<Metrics>,
    publisher: Client,
    subscriber: SubscriberClient,
    outgoing: mpsc::Sender<(String, Bytes)>,
    /// Heartbeats and presence replication: their own queue, so a flood of
    /// broadcasts never delays or drops them (a live node would look dead).
    control: mpsc::Sender<(String, Bytes)>,
    /// Topic channels this node wants, re-applied after every reconnect.
    wanted: Mutex<std::collections::HashSet<String>>,
    interest: mpsc::UnboundedSender<Interest>,
    receivers: Mutex<Option<Receivers>>,
    /// Every other node heard from, and how far its presence changes were applied.
    peers: Mutex<HashMap<String, tracker::Peer>>,
    /// Nodes that went silent (or were an earlier run of a restarted node), as
    /// last heard of, newest last: the dashboard shows them for a while.
    departed: Mutex<std::collections::VecDeque<(String, tracker::Peer)>>,
    /// Number of this node's last presence change sent.
    presence_seq: std::sync::atomic::AtomicU64,
    presence: Mutex<Option<Weak<Presence>>>,
    /// What this node says of itself in its heartbeats.
    summary: Mutex<Option<Summary>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Departed nodes the dashboard still lists.
const DEPARTED_KEPT: usize = 16;
/// ... for this long after they were last heard from.
const DEPARTED_SHOWN: Duration = Duration::from_secs(600);

/// Makes the summary a node sends with each heartbeat.
pub type Summary = Arc<dyn Fn() -> Value + Send + Sync>;

/// A node of the cluster as this one last heard of it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    /// Heard from within `cluster.node_timeout_ms` (always, for this node).
    pub alive: bool,
    pub last_seen: Duration,
    /// Its last heartbeat's summary (`Null` when it sent none).
    pub summary: Value,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Cluster {
    /// Connect to Redis (in the background: a Redis that is down is retried, and
    /// `/ready` says so meanwhile). A malformed URL is an error at once.
    pub fn connect(config: ClusterConfig, metrics: Arc<Metrics>) -> Result<Cluster, ClusterError> {
        let mut redis =
            RedisConfig::from_url(&config.redis_url).map_err(|e| ClusterError::Url {
                url: config.redis_url.clone(),
                reason: e.to_string(),
            })?;
        // A Redis that is down at start is retried like a lost one.
        redis.fail_fast = false;
        let mut builder = Builder::from_config(redis);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_performance_config(|p| p.broadcast_channel_capacity = 65_536)
            .with_connection_config(|c| c.max_command_buffer_len = config.buffer_messages);
        let publisher = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        let node_id = format!(
            "{}-{}",
            config.node_name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (outgoing, out_rx) = mpsc::channel(config.buffer_messages.max(1));
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (interest, interest_rx) = mpsc::unbounded_channel();
        Ok(Cluster {
            node_id,
            config,
            metrics,
            publisher,
            subscriber,
            outgoing,
            control,
            wanted: Mutex::default(),
            interest,
            receivers: Mutex::new(Some((out_rx, control_rx, interest_rx))),
            peers: Mutex::default(),
            departed: Mutex::default(),
            presence_seq: Default::default(),
            presence: Mutex::default(),
            summary: Mutex::default(),
            tasks: Mutex::default(),
        })
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}t:{topic}", self.config.channel_prefix)
    }

    fn nodes_channel(&self) -> String {
        format!("{}nodes", self.config.channel_prefix)
    }

    /// Start the connections and the tasks delivering remote broadcasts to `pubsub`
    /// and replicating `presence`.
    pub fn start(self: &Arc<Self>, pubsub: Weak<PubSub>, presence: Weak<Presence>) {
        let Some((out_rx, control_rx, interest_rx)) = self.receivers.lock().take() else {
            return; // started already
        };
        // Taken now, so nothing that arrives before the receive task runs is lost.
        let messages = self.subscriber.message_rx();
        *self.presence.lock() = Some(presence);
        let connections = (self.publisher.connect(), self.subscriber.connect());
        let resubscribe = self.subscriber.manage_subscriptions();
        let reconnects = {
            let metrics = self.metrics.clone();
            self.publisher.on_reconnect(move |server| {
                let metrics = metrics.clone();
                async move {
                    tracing::info!(%server, "redis connected");
                    metrics.redis_reconnects.inc();
                    Ok(())
                }
            })
        };
        let errors = self.publisher.on_error(|(error, server)| async move {
            tracing::warn!(%error, ?server, "redis connection error");
            Ok(())
        });
        // fred tracks only subscriptions that succeeded: after a reconnect, also
        // apply every channel this node wants (a SUBSCRIBE of a subscribed channel
        // is harmless).
        let resubscribe_wanted = {
            let me = Arc::downgrade(self);
            self.subscriber.on_reconnect(move |_| {
                let me = me.clone();
                async move {
                    if let Some(me) = me.upgrade() {
                        let wanted: Vec<String> = me.wanted.lock().iter().cloned().collect();
                        if !wanted.is_empty() {
                            let _ = me.subscriber.subscribe(wanted).await;
                        }
                    }
                    Ok(())
                }
            })
        };
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(async move {
            let _ = tokio::join!(
                connections.0,
                connections.1,
                resubscribe,
                reconnects,
                errors,
                resubscribe_wanted
            );
        }));
        tasks.push(tokio::spawn(self.clone().publish_loop(out_rx)));
        tasks.push(tokio::spawn(self.clone().publish_loop(control_rx)));
        tasks.push(tokio::spawn(self.clone().interest_loop(interest_rx)));
        tasks.push(tokio::spawn(self.clone().receive_loop(pubsub, messages)));
        tasks.push(tokio::spawn(self.clone().heartbeat_loop()));
    }

    fn history_keys(&self, topic: &str) -> Vec<String> {
        let p = &self.config.channel_prefix;
        vec![format!("{p}h:{topic}"), format!("{p}hm:{topic}")]
    }

    /// Number, keep and publish a history message (see [`PUBLISH_SCRIPT`]).
    pub async fn publish_numbered(
        &self,
        topic: &str,
        event: &str,
        payload: &Value,
        keep: Keep,
        seed: Option<&Seed>,
    ) -> Result<(u64, String), ClusterError> {
        let Keep {
            size,
            ttl_s,
            idle_ttl_s,
        } = keep;
        let message = Outgoing {
            n: &self.node_id,
            e: event,
            p: payload,
        };
        let body = serde_json::to_string(&message).expect("JSON values serialize");
        let args: Vec<String> = vec![
            body,
            size.to_string(),
            seed.map(|s| s.epoch.clone()).unwrap_or_default(),
            ttl_s.max(1).to_string(),
            idle_ttl_s.max(ttl_s).max(1).to_string(),
            self.channel(topic),
            seed.map(|s| s.head.to_string()).unwrap_or_default(),
        ];
        // Redis away: numbered locally by the caller, rather than queued here
        // (a queued script would publish it a second time on reconnect).
        if !self.connected() {
            return Err(ClusterError::Unavailable);
        }
        let script = self
            .publisher
            .eval(PUBLISH_SCRIPT, self.history_keys(topic), args);
        let (offset, epoch): (u64, String) = tokio::time::timeout(REDIS_TIMEOUT, script)
            .await
            .map_err(|_| ClusterError::Unavailable)??;
        if epoch.is_empty() {
            return Err(ClusterError::NoHistory);
        }
        Ok((offset, epoch))
    }

    /// Hold (take or renew) the cluster-wide `name` for `owner` for `ttl`:
    /// `Ok(None)` when `owner` holds it now, `Ok(Some(other))` when another
    /// owner does. A call is hosted by the node that holds `call:{id}`.
    pub async fn lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, ClusterError> {
        const LEASE: &str = "local cur = redis.call('GET', KEYS[1]) \
            if cur == false or cur == ARGV[1] then \
              redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return '' end \
            return cur";
        if !self.connected() {
            return Err(ClusterError::Unavailable);
        }
        let key = format!("{}lease:{name}", self.config.channel_prefix);
        let args = vec![owner.to_string(), ttl.as_millis().max(1).to_string()];
        let held = self
            .publisher
            .eval::<String, _, _, _>(LEASE, vec![key], args);
        let other = tokio::time::timeout(REDIS_TIMEOUT, held)
            .await
            .map_err(|_| ClusterError::Unavailable)??;
        Ok((!other.is_empty()).then_some(other))
    }

    /// Give up `name` if `owner` holds it.
    pub async fn release(&self, name: &str, owner: &str) -> Result<(), ClusterError> {
        const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
            return redis.call('DEL', KEYS[1]) end return 0";
        let key = format!("{}lease:{name}", self.config.channel_prefix);
        let done = self
            .publisher
            .eval::<i64, _, _, _>(RELEASE, vec![key], vec![owner.to_string()]);
        tokio::time::timeout(REDIS_TIMEOUT, done)
            .await
            .map_err(|_| ClusterError::Unavailable)??;
        Ok(())
    }

    /// Drop the kept message at `offset` of `topic` (deleted by a moderator), so a
    /// recovering client is not given it.
    pub async fn forget(&self, topic: &str, offset: u64) -> Result<(), ClusterError> {
        const FORGET: &str = "return redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])";
        let key = self.history_keys(topic).swap_remove(1);
        let removed =
            self.publisher
                .eval::<i64, _, _, _>(FORGET, vec![key], vec![offset.to_string()]);
        tokio::time::timeout(REDIS_TIMEOUT, removed)
            .await
            .map_err(|_| ClusterError::Unavailable)??;
        Ok(())
    }

    /// The shared head and epoch of `topic`, and its kept messages after `after`.
    pub async fn read_history(
        &self,
        topic: &str,
        after: Option<u64>,
        seed: Option<&Seed>,
        idle_ttl_s: u64,
    ) -> Result<(u64, String, Vec<Kept>), ClusterError> {
        let args: Vec<String> = vec![
            after.map(|a| a.to_string()).unwrap_or_default(),
            seed.map(|s| s.epoch.clone()).unwrap_or_default(),
            idle_ttl_s.max(1).to_string(),
            seed.map(|s| s.head.to_string()).unwrap_or_default(),
        ];
        if !self.connected() {
            return Err(ClusterError::Unavailable);
        }
        let script = self
            .publisher
            .eval(READ_SCRIPT, self.history_keys(topic), args);
        let (head, epoch, raw): (String, String, Vec<String>) =
            tokio::time::timeout(REDIS_TIMEOUT, script)
                .await
                .map_err(|_| ClusterError::Unavailable)??;
        if epoch.is_empty() {
            return Err(ClusterError::NoHistory);
        }
        let mut kept = Vec::with_capacity(raw.len());
        for m in raw {
            let Ok(incoming) = serde_json::from_str::<Incoming>(&m) else {
                continue;
            };
            let Some(offset) = incoming.o else { continue };
            let mut payload = incoming.p;
            set_offset(&mut payload, offset);
            kept.push(Kept {
                offset,
                event: incoming.e,
                payload,
            });
        }
        Ok((head.parse().unwrap_or(0), epoch, kept))
    }

    /// Leave the cluster: stop the tasks and close both connections.
    pub async fn stop(&self) {
        // Let the last presence changes (the leaves of a graceful stop) go out.
        let drained = async {
            while self.control.capacity() < CONTROL_QUEUE
                || self.outgoing.capacity() < self.config.buffer_messages.max(1)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let quit = async {
            let _ = self.subscriber.quit().await;
            let _ = self.publisher.quit().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), quit).await;
    }

    /// Publish `event` on `topic` to the other nodes (never waits; a full buffer
    /// drops it, counted).
    pub fn publish(&self, topic: &str, event: &str, payload: &Value) {
        let message = Outgoing {
            n: &self.node_id,
            e: event,
            p: payload,
        };
        let body = Bytes::from(serde_json::to_vec(&message).expect("JSON values serialize"));
        if self.outgoing.try_send((self.channel(topic), body)).is_err() {
            self.metrics.redis_dropped.inc();
        }
    }

    /// The first local subscriber of `topic` arrived: receive its remote broadcasts.
    pub fn watch(&self, topic: &str) {
        let _ = self.interest.send(Interest::Watch(topic.to_string()));
    }

    /// The last local subscriber of `topic` left.
    pub fn unwatch(&self, topic: &str) {
        let _ = self.interest.send(Interest::Unwatch(topic.to_string()));
    }

    /// Both Redis connections are up.
    pub fn connected(&self) -> bool {
        self.publisher.is_connected() && self.subscriber.is_connected()
    }

    /// Say `summary()` of this node in every heartbeat.
    pub fn set_summary(&self, summary: Summary) {
        *self.summary.lock() = Some(summary);
    }

    /// Every node heard from, this one first, and what each last said of itself.
    pub fn nodes(&self) -> Vec<NodeView> {
        let timeout = Duration::from_millis(self.config.node_timeout_ms);
        let own = self.summary.lock().clone();
        let mut nodes = vec![NodeView {
            id: self.node_id.clone(),
            alive: true,
            last_seen: Duration::ZERO,
            summary: own.map_or(Value::Null, |f| f()),
        }];
        let mut others: Vec<NodeView> = self
            .peers
            .lock()
            .iter()
            .map(|(id, p)| NodeView {
                id: id.clone(),
                alive: p.last_seen.elapsed() < timeout,
                last_seen: p.last_seen.elapsed(),
                summary: p.summary.clone(),
            })
            .collect();
        let peers: std::collections::HashSet<String> =
            others.iter().map(|n| n.id.clone()).collect();
        others.extend(
            self.departed
                .lock()
                .iter()
                .filter(|(id, p)| !peers.contains(id) && p.last_seen.elapsed() < DEPARTED_SHOWN)
                .map(|(id, p)| NodeView {
                    id: id.clone(),
                    alive: false,
                    last_seen: p.last_seen.elapsed(),
                    summary: p.summary.clone(),
                }),
        );
        others.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.extend(others);
        nodes
    }

    /// Nodes alive (heard from within `cluster.node_timeout_ms`), this one included.
    pub fn size(&self) -> usize {
        let timeout = Duration::from_millis(self.config.node_timeout_ms);
        1 + self
            .peers
            .lock()
            .values()
            .filter(|p| p.last_seen.elapsed() < timeout)
            .count()
    }

    /// Send broadcasts in order, several in flight on the one connection.
    async fn publish_loop(self: Arc<Self>, rx: mpsc::Receiver<(String, Bytes)>) {
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        tokio_stream_from(rx)
            .map(|(channel, body)| {
                let publisher = publisher.clone();
                async move { publisher.publish::<i64, _, _>(channel, body).await }
            })
            .buffered(64)
            .for_each(|r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "redis publish failed");
                    metrics.redis_dropped.inc();
                }
                std::future::ready(())
            })
            .await;
    }

    /// Apply subscription changes in the order they happened.
    async fn interest_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Interest>) {
        for channel in [
            self.nodes_channel(),
            format!("{}presence", self.config.channel_prefix),
        ] {
            if let Err(e) = self.subscriber.subscribe(channel).await {
                tracing::warn!(error = %e, "redis subscribe failed (retried on reconnect)");
            }
        }
        while let Some(change) = rx.recv().await {
            // A failure here is while Redis is down: manage_subscriptions applies
            // the tracked set again on reconnect.
            let r = match change {
                Interest::Watch(t) => {
                    let channel = self.channel(&t);
                    self.wanted.lock().insert(channel.clone());
                    self.subscriber.subscribe(channel).await
                }
                Interest::Unwatch(t) => {
                    let channel = self.channel(&t);
                    self.wanted.lock().remove(&channel);
                    self.subscriber.unsubscribe(channel).await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "redis subscription change deferred");
            }
        }
    }

    /// Deliver other nodes' broadcasts to local subscribers; note heartbeats.
    async fn receive_loop(
        self: Arc<Self>,
        pubsub: Weak<PubSub>,
        mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    ) {
        // The silence sweep runs here too: every change to peers and to remote
        // presences happens in this one task, in order.
        let mut sweep = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        let topic_prefix = format!("{}t:", self.config.channel_prefix);
        let nodes = self.nodes_channel();
        let presence = format!("{}presence", self.config.channel_prefix);
        loop {
            let received = tokio::select! {
                r = rx.recv() => r,
                _ = sweep.tick() => {
                    self.drop_silent();
                    continue;
                }
            };
            let message = match received {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "redis messages dropped: receiver lagging");
                    self.metrics.redis_dropped.inc_by(n);
                    continue;
                }
                Err(_) => return,
            };
            let Some(body) = message.value.as_bytes() else {
                continue;
            };
            if *message.channel == *presence {
                self.on_replica(body);
                continue;
            }
            let Ok(incoming) = serde_json::from_slice::<Incoming>(body) else {
                tracing::warn!(channel = %message.channel, "unreadable cluster message");
                continue;
            };
            if incoming.n == self.node_id {
                continue; // our own: delivered locally already
            }
            if *message.channel == *nodes {
                let seq = incoming.p["seq"].as_u64().unwrap_or(0);
                let summary = incoming.p.get("s").cloned().unwrap_or(Value::Null);
                self.on_heartbeat(incoming.n, seq, summary);
                continue;
            }
            let Some(topic) = message.channel.strip_prefix(topic_prefix.as_str()) else {
                continue;
            };
            let Some(pubsub) = pubsub.upgrade() else {
                return;
            };
            self.metrics.redis_messages_in.inc();
            let mut payload = incoming.p;
            if let Some(offset) = incoming.o {
                set_offset(&mut payload, offset);
            }
            pubsub.broadcast_local(topic, &incoming.e, &payload, None);
        }
    }

    /// Announce this node (in order with its presence deltas), time the Redis
    /// round trip, and remove the presences of nodes gone silent.
    async fn heartbeat_loop(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        loop {
            every.tick().await;
            let seq = self.presence_seq.load(std::sync::atomic::Ordering::SeqCst);
            let summary = self.summary.lock().clone();
            let summary = summary.map_or(Value::Null, |f| f());
            let beat = serde_json::json!({
                "n": self.node_id, "e": "heartbeat", "p": {"seq": seq, "s": summary}
            });
            let body = Bytes::from(serde_json::to_vec(&beat).expect("JSON serializes"));
            if self.control.try_send((self.nodes_channel(), body)).is_err() {
                self.metrics.redis_dropped.inc();
            }
            let started = Instant::now();
            if let Ok(Ok(_)) =
                tokio::time::timeout(every.period(), self.publisher.ping::<String>(None)).await
            {
                self.metrics
                    .redis_roundtrip_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            self.metrics.cluster_nodes.set(self.size() as i64);
            self.metrics.redis_connected.set(self.connected() as i64);
        }
    }
}

/// An mpsc receiver as a stream (tokio-stream is not a dependency for this).
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
