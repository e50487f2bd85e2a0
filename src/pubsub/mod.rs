//! Local PubSub: the topic registry and the broadcast fan-out.
//!
//! Topics live in a sharded map; each topic has its own lock, so a broadcast to one
//! topic never blocks another and no lock is held across an `.await` (there is none:
//! fan-out only queues). A broadcast is encoded once per serializer ([`Fastlane`])
//! and the same bytes are queued to every subscriber's [`Outbox`].
//!
//! Per-topic offsets live here for now: they are assigned under the topic lock, so
//! subscribers see offsets in increasing order. They restart when a topic empties.

pub mod outbox;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::protocols::phoenix::{Fastlane, Vsn};
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
    subscribers: Vec<Subscriber>,
    /// Offset of the last broadcast that asked for one.
    offset: u64,
}

/// The node-local topic registry.
pub struct PubSub {
    topics: DashMap<Arc<str>, Arc<Mutex<Topic>>>,
    metrics: Arc<Metrics>,
}

fn lock(topic: &Mutex<Topic>) -> std::sync::MutexGuard<'_, Topic> {
    topic.lock().unwrap_or_else(|p| p.into_inner())
}

impl PubSub {
    pub fn new(metrics: Arc<Metrics>) -> PubSub {
        PubSub {
            topics: DashMap::new(),
            metrics,
        }
    }

    /// Subscribe a connection; a second subscribe of the same session replaces the first.
    pub fn subscribe(&self, topic: &str, subscriber: Subscriber) {
        // Hold the shard lock while inserting so a concurrent unsubscribe cannot
        // remove the topic between lookup and insert (lock order: shard, then topic).
        let entry = self.topics.entry(Arc::from(topic)).or_default();
        let mut t = lock(entry.value());
        t.subscribers.retain(|s| s.session != subscriber.session);
        t.subscribers.push(subscriber);
    }

    /// Remove a connection from a topic; the topic goes when its last subscriber does.
    pub fn unsubscribe(&self, topic: &str, session: SessionId) {
        if let Some(t) = self.topics.get(topic).map(|e| e.value().clone()) {
            let mut t = lock(&t);
            if let Some(i) = t.subscribers.iter().position(|s| s.session == session) {
                t.subscribers.swap_remove(i);
            }
        }
        self.topics
            .remove_if(topic, |_, t| lock(t).subscribers.is_empty());
    }

    /// Remove a connection from every topic (used when a session crashed and its
    /// own record of joined topics is gone). Scans all topics: crashes are rare.
    pub fn unsubscribe_everywhere(&self, session: SessionId) {
        let topics: Vec<Arc<str>> = self
            .topics
            .iter()
            .filter(|e| {
                lock(e.value())
                    .subscribers
                    .iter()
                    .any(|s| s.session == session)
            })
            .map(|e| e.key().clone())
            .collect();
        for topic in topics {
            self.unsubscribe(&topic, session);
        }
    }

    /// Queue `event` to every subscriber of `topic` except `except`; returns how many.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Value,
        except: Option<SessionId>,
    ) -> usize {
        let Some(t) = self.topics.get(topic).map(|e| e.value().clone()) else {
            return 0;
        };
        let t = lock(&t);
        self.fan_out(&t, topic, event, payload, except)
    }

    /// Assign the topic's next offset, build the payload with it, and broadcast it,
    /// all under the topic lock so offsets reach every subscriber in order.
    pub fn broadcast_with_offset(
        &self,
        topic: &str,
        event: &str,
        payload: impl FnOnce(u64) -> Value,
    ) -> (u64, Value) {
        let t = self
            .topics
            .entry(Arc::from(topic))
            .or_default()
            .value()
            .clone();
        let mut t = lock(&t);
        t.offset += 1;
        let offset = t.offset;
        let payload = payload(offset);
        self.fan_out(&t, topic, event, &payload, None);
        (offset, payload)
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
        for s in &t.subscribers {
            if Some(s.session) == except {
                continue;
            }
            match s.outbox.push(lane.frame(s.vsn).clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::Full) => {
                    self.metrics.slow_consumers.inc();
                    s.outbox
                        .close_now(1008, "slow consumer: outbound queue full");
                }
                Err(PushError::Closed) => {}
            }
        }
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
            .map(|e| lock(e.value()).subscribers.len())
            .unwrap_or(0)
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
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
        let ps = PubSub::new(Arc::new(Metrics::new()));
        let mut a = sub(&ps, "t", 1, Vsn::V2);
        let mut b = sub(&ps, "t", 2, Vsn::V2);
        let mut c = sub(&ps, "t", 3, Vsn::V1);
        assert_eq!(ps.broadcast("t", "e", &json!({"x": 1}), Some(2)), 2);
        assert_eq!(frame(&mut a).await, r#"[null,null,"t","e",{"x":1}]"#);
        assert!(frame(&mut c).await.starts_with('{'));
        assert!(b.try_recv().is_none(), "excluded sender got the broadcast");
    }

    #[tokio::test]
    async fn offsets_increase_and_topics_are_pruned() {
        let ps = PubSub::new(Arc::new(Metrics::new()));
        let _a = sub(&ps, "t", 1, Vsn::V2);
        let (o1, _) = ps.broadcast_with_offset("t", "e", |o| json!({ "offset": o }));
        let (o2, p2) = ps.broadcast_with_offset("t", "e", |o| json!({ "offset": o }));
        assert_eq!((o1, o2), (1, 2));
        assert_eq!(p2, json!({"offset": 2}));
        ps.unsubscribe("t", 1);
        assert_eq!(ps.topic_count(), 0);
    }

    #[tokio::test]
    async fn slow_consumer_is_closed_not_buffered() {
        let ps = PubSub::new(Arc::new(Metrics::new()));
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
    async fn unsubscribe_everywhere() {
        let ps = PubSub::new(Arc::new(Metrics::new()));
        let _a = sub(&ps, "t1", 1, Vsn::V2);
        let _b = sub(&ps, "t2", 1, Vsn::V2);
        let _c = sub(&ps, "t2", 2, Vsn::V2);
        ps.unsubscribe_everywhere(1);
        assert_eq!(ps.subscriber_count("t1"), 0);
        assert_eq!(ps.subscriber_count("t2"), 1);
    }
}
