//! The in-process bus: the default, so a single node needs nothing installed.
//!
//! Plain events go through a broadcast channel to this process's subscribers.
//! Work queues keep JetStream's contract within the process: a delivery is owed
//! until acknowledged, comes back after `ack_wait_ms` when dropped, after its delay
//! when negatively acknowledged, and goes to `armoricore.dlq.<subject>` (as a plain
//! event) once `max_deliver` deliveries are used up.
//!
//! With a database (the default) work outlives the process: every work message is
//! recorded as a job (`queued`) before `enqueue` returns, and a node that starts
//! queues its own unfinished jobs again ([`MemoryBus::restore`]). Without one, work
//! lives and dies with the process.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};

use super::{Acker, Bus, BusError, Delivery, Message, dead_letter_body, dead_letter_subject};
use crate::config::BusConfig;
use crate::metrics::Metrics;

/// One work message and how often it was handed out.
#[derive(Clone)]
struct Item {
    id: u64,
    body: Bytes,
    delivered: u32,
}

/// One work subject's messages: ready, waiting for a delay, handed out.
#[derive(Default)]
struct Queue {
    ready: VecDeque<Item>,
    delayed: Vec<(Instant, Item)>,
    inflight: HashMap<u64, (Instant, Item)>,
}

/// Ids seen within the window, and their order for expiry.
#[derive(Default)]
struct Recent {
    ids: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

/// Where the embedded bus records its work: the node's job records.
pub struct Journal {
    pub store: Arc<crate::store::Store>,
    /// This node's name: a restarted node takes back only its own work.
    pub node: String,
}

struct Shared {
    config: BusConfig,
    journal: Option<Journal>,
    metrics: Arc<Metrics>,
    plain: broadcast::Sender<Message>,
    queues: Mutex<HashMap<String, Queue>>,
    /// Event ids enqueued recently (JetStream's duplicate window, in-process).
    recent: Mutex<Recent>,
    next_id: std::sync::atomic::AtomicU64,
    work_added: Notify,
}

/// The default bus: events stay inside this process.
pub struct MemoryBus {
    shared: Arc<Shared>,
}

impl MemoryBus {
    pub fn new(config: BusConfig, metrics: Arc<Metrics>, journal: Option<Journal>) -> MemoryBus {
        metrics.bus_connected.set(1);
        MemoryBus {
            shared: Arc::new(Shared {
                journal,
                plain: broadcast::channel(config.buffer_events.max(16)).0,
                config,
                metrics,
                queues: Mutex::default(),
                recent: Mutex::default(),
                next_id: Default::default(),
                work_added: Notify::new(),
            }),
        }
    }
}

impl MemoryBus {
    /// Queue again the work this node recorded and did not finish (it stopped or
    /// died meanwhile); how many. Each goes out with its delivery count reset (its
    /// record's `attempts` keeps counting).
    pub async fn restore(&self) -> Result<usize, crate::store::StoreError> {
        let Some(journal) = &self.shared.journal else {
            return Ok(0);
        };
        // A SQLite file belongs to one node, whatever its name was last time (its
        // port may have changed); a shared PostgreSQL holds other nodes' work too.
        let node = match journal.store.backend() {
            crate::store::Backend::Sqlite => None,
            crate::store::Backend::Postgres => Some(journal.node.as_str()),
        };
        let unfinished = journal.store.unfinished_jobs(node, "memory").await?;
        let mut queued = 0;
        for job in &unfinished {
            let wire = format!("{}{}", self.shared.config.subject_prefix, job.kind);
            // A job that was running each time the node died may be what kills it.
            if job.attempts >= self.shared.config.max_deliver {
                let reason = format!(
                    "gave up: the node stopped during each of its {} runs",
                    job.attempts
                );
                tracing::warn!(subject = %job.kind, event_id = %job.id, %reason, "unfinished work dead-lettered");
                journal
                    .store
                    .job_status(
                        &job.id,
                        crate::store::JobStatus::Failed,
                        None,
                        Some(&reason),
                    )
                    .await?;
                let item = Item {
                    id: 0,
                    body: Bytes::from(job.request.clone()),
                    delivered: job.attempts,
                };
                self.shared.dead_letter(&wire, &item, &reason);
                continue;
            }
            journal
                .store
                .job_status(
                    &job.id,
                    crate::store::JobStatus::Queued,
                    None,
                    Some("re-queued: the node restarted"),
                )
                .await?;
            queued += 1;
            // A publisher retrying the same event meanwhile is a duplicate.
            let now = Instant::now();
            let mut recent = self.shared.recent.lock();
            recent.ids.insert(job.id.clone(), now);
            recent.order.push_back((now, job.id.clone()));
            drop(recent);
            tracing::info!(subject = %job.kind, event_id = %job.id, status = job.status.as_str(), "re-queued unfinished work");
            self.push(&wire, Bytes::from(job.request.clone()));
        }
        Ok(queued)
    }

    /// Add a work message to its queue.
    fn push(&self, subject: &str, body: Bytes) {
        let id = self
            .shared
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared
            .queues
            .lock()
            .entry(subject.to_string())
            .or_default()
            .ready
            .push_back(Item {
                id,
                body,
                delivered: 0,
            });
        self.shared.work_added.notify_waiters();
    }
}

impl Shared {
    fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.config.ack_wait_ms)
    }

    /// A message that used its last delivery: to the dead-letter subject.
    fn dead_letter(&self, subject: &str, item: &Item, reason: &str) {
        tracing::warn!(
            subject,
            delivered = item.delivered,
            reason,
            "work message dead-lettered"
        );
        self.metrics
            .bus_dead_letters
            .with_label_values(&[subject, "max_deliveries"])
            .inc();
        let body = dead_letter_body(subject, &item.body, reason, item.delivered);
        let _ = self.plain.send(Message {
            subject: dead_letter_subject(&self.config, subject),
            body,
        });
    }

    /// Back to `ready` (or dead letters) whatever is due; the next time something
    /// becomes due, if anything waits.
    fn reclaim(&self, subject: &str, q: &mut Queue, now: Instant) -> Option<Instant> {
        let expired: Vec<u64> = q
            .inflight
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, item)) = q.inflight.remove(&id) {
                self.requeue(subject, q, item, None, now);
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = q.delayed.drain(..).partition(|(at, _)| *at <= now);
        q.delayed = later;
        q.ready.extend(due.into_iter().map(|(_, item)| item));
        q.inflight
            .values()
            .map(|(at, _)| *at)
            .chain(q.delayed.iter().map(|(at, _)| *at))
            .min()
    }

    /// An item handed out and not acknowledged: deliver again (after `delay`) or,
    /// with no delivery left, dead-letter it.
    fn requeue(
        &self,
        subject: &str,
        q: &mut Queue,
        item: Item,
        delay: Option<Duration>,
        now: Instant,
    ) {
        if item.delivered >= self.config.max_deliver {
            self.dead_letter(
                subject,
                &item,
                "max deliveries reached without acknowledgement",
            );
            return;
        }
        match delay {
            Some(d) if !d.is_zero() => q.delayed.push((now + d, item)),
            _ => q.ready.push_back(item),
        }
    }

    /// Hand out the next ready item of `subject`, or say when to look again.
    fn take(self: &Arc<Self>, subject: &str) -> Result<Delivery, Option<Instant>> {
        let now = Instant::now();
        let mut queues = self.queues.lock();
        let q = queues.entry(subject.to_string()).or_default();
        let next = self.reclaim(subject, q, now);
        let Some(mut item) = q.ready.pop_front() else {
            return Err(next);
        };
        item.delivered += 1;
        q.inflight
            .insert(item.id, (now + self.ack_wait(), item.clone()));
        Ok(Delivery {
            subject: subject.to_string(),
            body: item.body,
            delivered: item.delivered,
            acker: Box::new(MemoryAcker {
                shared: self.clone(),
                subject: subject.to_string(),
                id: item.id,
            }),
        })
    }
}

/// Settles one in-process delivery; a settle after the delivery expired is a no-op
/// (as a late JetStream ack is).
struct MemoryAcker {
    shared: Arc<Shared>,
    subject: String,
    id: u64,
}

impl MemoryAcker {
    fn settle(&self, f: impl FnOnce(&Shared, &mut Queue, (Instant, Item))) {
        let mut queues = self.shared.queues.lock();
        if let Some(q) = queues.get_mut(&self.subject)
            && let Some(entry) = q.inflight.remove(&self.id)
        {
            f(&self.shared, q, entry);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(|_, _, _| {});
        Ok(())
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let subject = self.subject.clone();
        self.settle(|shared, q, (_, item)| {
            shared.requeue(&subject, q, item, delay, Instant::now())
        });
        self.shared.work_added.notify_waiters();
        Ok(())
    }

    async fn progress(&self) -> Result<(), BusError> {
        let wait = self.shared.ack_wait();
        self.settle(|_, q, (_, item)| {
            q.inflight.insert(item.id, (Instant::now() + wait, item));
        });
        Ok(())
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn emit(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        // Nobody subscribed is not an error: nobody is interested yet.
        let _ = self.shared.plain.send(Message {
            subject: subject.to_string(),
            body,
        });
        Ok(())
    }

    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        self.emit(subject, body)
    }

    async fn subscribe(&self, pattern: &str) -> Result<BoxStream<'static, Message>, BusError> {
        let rx = self.shared.plain.subscribe();
        let pattern = pattern.to_string();
        let metrics = self.shared.metrics.clone();
        let stream = stream::unfold(rx, move |mut rx| {
            let (pattern, metrics) = (pattern.clone(), metrics.clone());
            async move {
                loop {
                    match rx.recv().await {
                        Ok(m) if super::subject_matches(&pattern, &m.subject) => {
                            return Some((m, rx));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(pattern, missed = n, "bus subscriber lagging");
                            metrics.bus_dropped.inc_by(n);
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn store_dead_letter(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        self.emit(subject, body)
    }

    async fn enqueue(&self, subject: &str, event_id: &str, body: Bytes) -> Result<(), BusError> {
        // Recorded first: a failed write refuses the event (the publisher retries),
        // and one whose publisher went away mid-write leaves a row the next start
        // queues, never an event marked seen and not queued.
        if let Some(journal) = &self.shared.journal {
            let kind = subject
                .strip_prefix(self.shared.config.subject_prefix.as_str())
                .unwrap_or(subject);
            let payload = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("payload").and_then(|p| p.as_object()).cloned())
                .unwrap_or_default();
            let job = crate::store::jobs::NewJob {
                id: event_id,
                kind,
                payload: &payload,
                node: &journal.node,
                bus: "memory",
                request: &String::from_utf8_lossy(&body),
            };
            if let Err(e) = journal.store.job_queued(&job).await {
                self.shared
                    .metrics
                    .store_errors
                    .with_label_values(&["job"])
                    .inc();
                return Err(BusError::Journal(e.to_string()));
            }
        }
        let now = Instant::now();
        {
            let window = Duration::from_secs(self.shared.config.dedupe_window_s);
            let mut recent = self.shared.recent.lock();
            while let Some((at, _)) = recent.order.front() {
                if now.duration_since(*at) < window {
                    break;
                }
                let (at, id) = recent.order.pop_front().expect("front exists");
                if recent.ids.get(&id) == Some(&at) {
                    recent.ids.remove(&id);
                }
            }
            if recent.ids.contains_key(event_id) {
                return Ok(()); // the same event again: queued once
            }
            recent.ids.insert(event_id.to_string(), now);
            recent.order.push_back((now, event_id.to_string()));
        }
        self.push(subject, body);
        Ok(())
    }

    async fn prepare(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn fetch(
        &self,
        subject: &str,
        max: usize,
        wait: Duration,
    ) -> Result<BoxStream<'static, Delivery>, BusError> {
        let shared = self.shared.clone();
        let subject = subject.to_string();
        let deadline = tokio::time::Instant::now() + wait;
        let stream = stream::unfold(max, move |left| {
            let (shared, subject) = (shared.clone(), subject.clone());
            async move {
                if left == 0 {
                    return None;
                }
                loop {
                    // Register interest before looking, so an enqueue in between wakes us.
                    let added = shared.work_added.notified();
                    let next = match shared.take(&subject) {
                        Ok(d) => return Some((d, left - 1)),
                        Err(next) => next,
                    };
                    let until = next
                        .map(tokio::time::Instant::from_std)
                        .map_or(deadline, |n| n.min(deadline));
                    tokio::select! {
                        _ = added => {}
                        _ = tokio::time::sleep_until(until) => {
                            if tokio::time::Instant::now() >= deadline {
                                return None;
                            }
                        }
                    }
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn backlog(&self, subject: &str) -> Option<super::Backlog> {
        let queues = self.shared.queues.lock();
        let q = queues.get(subject)?;
        Some(super::Backlog {
            pending: (q.ready.len() + q.delayed.len()) as u64,
            ack_pending: q.inflight.len() as u64,
        })
    }

    fn connected(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(adjust: impl FnOnce(&mut BusConfig)) -> MemoryBus {
        let mut c = crate::config::Config::defaults().bus;
        adjust(&mut c);
        MemoryBus::new(c, Arc::new(Metrics::new()), None)
    }

    async fn one(bus: &MemoryBus, wait_ms: u64) -> Option<Delivery> {
        bus.fetch("media.uploaded", 1, Duration::from_millis(wait_ms))
            .await
            .unwrap()
            .next()
            .await
    }

    #[tokio::test]
    async fn acked_work_is_gone() {
        let b = bus(|_| {});
        b.enqueue("media.uploaded", "e1", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let backlog = |pending, ack_pending| {
            Some(super::super::Backlog {
                pending,
                ack_pending,
            })
        };
        assert_eq!(b.backlog("media.uploaded").await, backlog(1, 0));
        let d = one(&b, 1000).await.unwrap();
        assert_eq!(d.delivered, 1);
        assert_eq!(b.backlog("media.uploaded").await, backlog(0, 1));
        d.acker.ack().await.unwrap();
        assert_eq!(b.backlog("media.uploaded").await, backlog(0, 0));
        assert!(one(&b, 50).await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_delivery_comes_back_after_ack_wait() {
        let b = bus(|c| c.ack_wait_ms = 100);
        b.enqueue("media.uploaded", "e1", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        drop(one(&b, 1000).await.unwrap());
        assert!(one(&b, 30).await.is_none(), "not before ack_wait");
        let again = one(&b, 1000).await.expect("redelivered");
        assert_eq!(again.delivered, 2);
    }

    #[tokio::test]
    async fn progress_keeps_the_lease() {
        let b = bus(|c| c.ack_wait_ms = 150);
        b.enqueue("media.uploaded", "e1", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let d = one(&b, 1000).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(80)).await;
            d.acker.progress().await.unwrap();
        }
        assert!(
            one(&b, 50).await.is_none(),
            "lease kept for 370 ms > ack_wait"
        );
        d.acker.ack().await.unwrap();
    }

    #[tokio::test]
    async fn nak_delays_then_the_last_delivery_is_dead_lettered() {
        let b = bus(|c| c.max_deliver = 2);
        let mut dlq = b.subscribe("armoricore.dlq.>").await.unwrap();
        b.enqueue("media.uploaded", "e1", Bytes::from_static(b"{\"x\":1}"))
            .await
            .unwrap();
        let d = one(&b, 1000).await.unwrap();
        d.acker.nak(Some(Duration::from_millis(80))).await.unwrap();
        assert!(one(&b, 20).await.is_none(), "not before its delay");
        let d = one(&b, 1000).await.unwrap();
        assert_eq!(d.delivered, 2);
        d.acker.nak(None).await.unwrap();
        let letter = tokio::time::timeout(Duration::from_secs(1), dlq.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(letter.subject, "armoricore.dlq.media.uploaded");
        let v: serde_json::Value = serde_json::from_slice(&letter.body).unwrap();
        assert_eq!(v["event"]["x"], 1);
        assert_eq!(v["delivered"], 2);
        assert!(one(&b, 50).await.is_none());
    }

    #[tokio::test]
    async fn the_same_event_id_is_stored_once() {
        let b = bus(|_| {});
        for _ in 0..2 {
            b.enqueue("media.uploaded", "same", Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        one(&b, 1000).await.unwrap().acker.ack().await.unwrap();
        assert!(one(&b, 50).await.is_none());
    }

    #[tokio::test]
    async fn subscribers_get_matching_subjects_only() {
        let b = bus(|_| {});
        let mut sub = b.subscribe("media.*").await.unwrap();
        b.emit("chat.message", Bytes::from_static(b"1")).unwrap();
        b.emit("media.ready", Bytes::from_static(b"2")).unwrap();
        let m = sub.next().await.unwrap();
        assert_eq!(m.subject, "media.ready");
        assert_eq!(&m.body[..], b"2");
    }
}
