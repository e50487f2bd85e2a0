//! Local PubSub: the topic registry and the broadcast fan-out.
//!
//! Topics live in a sharded map; each topic has its own lock, so a broadcast to one
//! topic never blocks another and no lock is held across an `.await` (there is none:
//! fan-out only queues). A broadcast is encoded once per serializer ([`Fastlane`])
//! and the same bytes are queued to every subscriber's [`Outbox`].
//!
//! Offsets and history are the [`crate::history`] module's: it numbers a message
//! and fans it out under its own per-topic lock.

pub mod outbox;

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::Mutex;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::protocols::phoenix::{Fastlane, Frame, Vsn};
pub use outbox::{Outbox, PushError};

/// Identifies one connection (its Session actor).
pub type SessionId = u64;

/// A connection subscribed to a topic.
#[derive(Clone)]
pub struct Subscriber {
    pub session: SessionId,
    pub vsn: Vsn,
    pub outbox: Outbox,
}

#[derive(Default)]
struct Topic {
    /// By session: O(1) join and leave, even in a topic of 100k subscribers.
    subscribers: IndexMap<SessionId, Subscriber>,
    /// Joins in progress (cluster recovery): what was broadcast while each reads
    /// the shared history, so nothing falls between the read and the subscribe.
    taps: Vec<(SessionId, Vec<Tapped>)>,
    /// Emptied and removed from the registry: whoever still holds it must look again.
    dead: bool,
    /// Broadcasts delivered here since the topic appeared (the dashboard's rates).
    broadcasts: u64,
}

/// A broadcast seen by a tap: its event and payload.
pub type Tapped = (Arc<str>, Arc<Value>);

/// The node's topic registry; with a cluster, also its link to the other nodes.
pub struct PubSub {
    topics: DashMap<Arc<str>, Arc<Mutex<Topic>>>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
}

/// Queue one frame; a full queue closes the connection as a slow consumer.
/// `false` when the frame was not queued.
fn queue(outbox: &Outbox, frame: Frame, metrics: &Metrics) -> bool {
    match outbox.push(frame) {
        Ok(()) => true,
        Err(PushError::Full) => {
            metrics.slow_consumers.inc();
            outbox.close_now(1008, "slow consumer: outbound queue full");
            false
        }
        Err(PushError::Closed) => false,
    }
}

/// Queue one frame to one connection (a reply, a push), counted in
/// `messages_out`; see [`queue`] for a full queue.
pub fn offer(outbox: &Outbox, frame: Frame, metrics: &Metrics) -> bool {
    let queued = queue(outbox, frame, metrics);
    if queued {
        metrics.messages_out.inc();
    }
    queued
}

impl PubSub {
    pub fn new(metrics: Arc<Metrics>, cluster: Option<Arc<Cluster>>) -> PubSub {
        PubSub {
            topics: DashMap::new(),
            metrics,
            cluster,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The live topic entry, created if missing. The shard lock is released before
    /// the caller locks the topic, so a long broadcast never blocks a shard.
    fn topic(&self, topic: &str) -> Arc<Mutex<Topic>> {
        if let Some(t) = self.topics.get(topic) {
            return t.value().clone();
        }
        self.topics
            .entry(Arc::from(topic))
            .or_default()
            .value()
            .clone()
    }

    /// Run `f` on the live topic entry (retrying if it died meanwhile).
    fn with_topic<R>(&self, topic: &str, mut f: impl FnMut(&mut Topic) -> R) -> R {
        loop {
            let t = self.topic(topic);
            let mut guard = t.lock();
            if !guard.dead {
                return f(&mut guard);
            }
        }
    }

    /// Subscribe a connection; a second subscribe of the same session replaces the first.
    pub fn subscribe(&self, topic: &str, subscriber: Subscriber) {
        let mut subscriber = Some(subscriber);
        self.with_topic(topic, |t| {
            if let Some(s) = subscriber.take() {
                // Under the topic lock, so watch and unwatch go out in order.
                if t.subscribers.is_empty()
                    && t.taps.is_empty()
                    && let Some(cluster) = &self.cluster
                {
                    cluster.watch(topic);
                }
                t.subscribers.insert(s.session, s);
            }
        });
    }

    /// Start recording `topic`'s broadcasts for `session`, whose join is reading the
    /// shared history; [`PubSub::subscribe_with`] ends it.
    pub fn tap(&self, topic: &str, session: SessionId) {
        self.with_topic(topic, |t| {
            if t.subscribers.is_empty()
                && t.taps.is_empty()
                && let Some(cluster) = &self.cluster
            {
                cluster.watch(topic);
            }
            t.taps.push((session, Vec::new()));
        });
    }

    /// Subscribe, and under the topic's lock (no broadcast in between) hand `then`
    /// what the session's tap recorded, so it can queue its join reply, the
    /// recovered messages and those recorded, before any later broadcast.
    pub fn subscribe_with(
        &self,
        topic: &str,
        subscriber: Subscriber,
        then: impl FnOnce(Vec<Tapped>),
    ) {
        let mut subscriber = Some(subscriber);
        let mut then = Some(then);
        self.with_topic(topic, |t| {
            let Some(s) = subscriber.take() else {
                return;
            };
            let session = s.session;
            let tapped = match t.taps.iter().position(|(id, _)| *id == session) {
                Some(i) => t.taps.swap_remove(i).1,
                None => Vec::new(),
            };
            if t.subscribers.is_empty()
                && t.taps.is_empty()
                && let Some(cluster) = &self.cluster
            {
                cluster.watch(topic);
            }
            t.subscribers.insert(session, s);
            if let Some(then) = then.take() {
                then(tapped);
            }
        });
    }

    /// Remove a connection from a topic; the topic goes when its last subscriber does.
    pub fn unsubscribe(&self, topic: &str, session: SessionId) {
        let Some(t) = self.topics.get(topic).map(|e| e.value().clone()) else {
            return;
        };
        let mut guard = t.lock();
        guard.subscribers.swap_remove(&session);
        if guard.subscribers.is_empty() && guard.taps.is_empty() && !guard.dead {
            guard.dead = true;
            if let Some(cluster) = &self.cluster {
                cluster.unwatch(topic);
            }
            drop(guard);
            self.topics
                .remove_if(topic, |_, current| Arc::ptr_eq(current, &t));
        }
    }

    /// Queue `event` to every subscriber of `topic` except `except`, on this node
    /// and (in a cluster) on the others; returns how many local subscribers.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Value,
        except: Option<SessionId>,
    ) -> usize {
        if let Some(cluster) = &self.cluster {
            cluster.publish(topic, event, payload);
        }
        self.broadcast_local(topic, event, payload, except)
    }

    /// Queue `event` to this node's subscribers of `topic` only (what other nodes
    /// sent, presence diffs, bus results every node receives itself).
    pub fn broadcast_local(
        &self,
        topic: &str,
        event: &str,
        payload: &Value,
        except: Option<SessionId>,
    ) -> usize {
        let Some(t) = self.topics.get(topic).map(|e| e.value().clone()) else {
            return 0;
        };
        let mut guard = t.lock();
        guard.broadcasts += 1;
        if !guard.taps.is_empty() {
            let seen: Tapped = (Arc::from(event), Arc::new(payload.clone()));
            for (_, tapped) in guard.taps.iter_mut() {
                tapped.push(seen.clone());
            }
        }
        self.fan_out(&guard, topic, event, payload, except)
    }

    fn fan_out(
        &self,
        t: &Topic,
        topic: &str,
        event: &str,
        payload: &Value,
        except: Option<SessionId>,
    ) -> usize {
        let started = Instant::now();
        let lane = Fastlane::new(topic, event, payload);
        let mut delivered = 0;
        for s in t.subscribers.values() {
            if Some(s.session) == except {
                continue;
            }
            if queue(&s.outbox, lane.frame(s.vsn).clone(), &self.metrics) {
                delivered += 1;
            }
        }
        // Counted once per broadcast, not once per delivery (a shared atomic).
        self.metrics.messages_out.inc_by(delivered as u64);
        self.metrics
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.fanout_subscribers.observe(delivered as f64);
        delivered
    }

    /// Current subscribers of a topic.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics
            .get(topic)
            .map(|e| e.value().clone())
            .map(|t| t.lock().subscribers.len())
            .unwrap_or(0)
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The `n` topics with the most subscribers here: `(topic, subscribers,
    /// broadcasts so far)`, most subscribers first. Visits every topic: for the
    /// dashboard, not for hot paths.
    pub fn busiest(&self, n: usize) -> Vec<(Arc<str>, usize, u64)> {
        // The map's locks are let go before any topic's is taken (its order elsewhere).
        let topics: Vec<(Arc<str>, Arc<Mutex<Topic>>)> = self
            .topics
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut all: Vec<(Arc<str>, usize, u64)> = topics
            .into_iter()
            .map(|(name, t)| {
                let t = t.lock();
                (name, t.subscribers.len(), t.broadcasts)
            })
            .collect();
        let order = |a: &(Arc<str>, usize, u64), b: &(Arc<str>, usize, u64)| {
            b.1.cmp(&a.1).then_with(|| b.2.cmp(&a.2))
        };
        if n < all.len() {
            all.select_nth_unstable_by(n, order);
            all.truncate(n);
        }
        all.sort_unstable_by(order);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::outbox::{Outbound, OutboxReceiver, channel};
    use serde_json::json;

    fn sub(pubsub: &PubSub, topic: &str, session: SessionId, vsn: Vsn) -> OutboxReceiver {
        let (outbox, rx) = channel(8);
        pubsub.subscribe(
            topic,
            Subscriber {
                session,
                vsn,
                outbox,
            },
        );
        rx
    }

    async fn frame(rx: &mut OutboxReceiver) -> String {
        match rx.recv().await {
            Outbound::Frame(f) => f.as_str().to_string(),
            Outbound::Close(c) => panic!("closed: {c:?}"),
        }
    }

    #[tokio::test]
    async fn broadcast_shares_bytes_per_serializer() {
        let ps = PubSub::new(Arc::new(Metrics::new()), None);
        let mut a = sub(&ps, "t", 1, Vsn::V2);
        let mut b = sub(&ps, "t", 2, Vsn::V2);
        let mut c = sub(&ps, "t", 3, Vsn::V1);
        assert_eq!(ps.broadcast("t", "e", &json!({"x": 1}), Some(2)), 2);
        assert_eq!(frame(&mut a).await, r#"[null,null,"t","e",{"x":1}]"#);
        assert!(frame(&mut c).await.starts_with('{'));
        assert!(b.try_recv().is_none(), "excluded sender got the broadcast");
    }

    #[tokio::test]
    async fn topics_are_pruned_when_empty() {
        let ps = PubSub::new(Arc::new(Metrics::new()), None);
        let _a = sub(&ps, "t", 1, Vsn::V2);
        assert_eq!(ps.topic_count(), 1);
        ps.unsubscribe("t", 1);
        assert_eq!(ps.topic_count(), 0);
    }

    #[tokio::test]
    async fn slow_consumer_is_closed_not_buffered() {
        let ps = PubSub::new(Arc::new(Metrics::new()), None);
        let (outbox, mut rx) = channel(1);
        ps.subscribe(
            "t",
            Subscriber {
                session: 1,
                vsn: Vsn::V2,
                outbox,
            },
        );
        ps.broadcast("t", "e", &json!(1), None);
        ps.broadcast("t", "e", &json!(2), None);
        assert!(matches!(rx.recv().await, Outbound::Close(c) if c.code == 1008));
    }

    #[tokio::test]
    async fn resubscribe_after_the_topic_emptied() {
        let ps = PubSub::new(Arc::new(Metrics::new()), None);
        let _a = sub(&ps, "t", 1, Vsn::V2);
        let held = ps.topic("t");
        ps.unsubscribe("t", 1);
        assert!(held.lock().dead, "an emptied topic is marked dead");
        let mut b = sub(&ps, "t", 2, Vsn::V2);
        assert_eq!(ps.subscriber_count("t"), 1);
        assert_eq!(ps.broadcast("t", "e", &json!(1), None), 1);
        assert!(matches!(b.recv().await, Outbound::Frame(_)));
    }
}
