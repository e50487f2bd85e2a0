//! The NATS bus (`MESSAGE_BUS_URL=nats://...`): core NATS for plain events,
//! JetStream for work.
//!
//! ```text
//! stream ARMORICORE_WORK   subjects: the four work subjects (with bus.subject_prefix)
//!                          retention WorkQueue: a message leaves when acknowledged
//!   consumer armoricore-media-uploaded          one durable pull consumer per work
//!   consumer armoricore-notification-requested  subject, so a flood of transcodes never
//!   ...                                         holds back notifications (each has its
//!                                               own max_ack_pending)
//! stream ARMORICORE_DLQ    subjects: armoricore.dlq.>   retention Limits (dlq_max_age_s)
//! ```
//!
//! Consumers use explicit acks, `ack_wait_ms` and `max_deliver`; a running job keeps
//! its lease with `+WPI`. A message whose last delivery was never acknowledged (its
//! node died on the last attempt) raises the server's MAX_DELIVERIES advisory: one
//! node (queue group) copies it to the dead-letter stream and deletes it from the
//! work stream, so it never vanishes.
//!
//! The client reconnects forever with capped exponential backoff; plain events
//! emitted meanwhile wait in a bounded buffer (`bus.buffer_events`), and beyond it
//! are dropped and counted (`armoricore_bus_dropped_total`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Acker, Bus, BusError, Delivery, Message, dead_letter_body, dead_letter_subject};
use crate::bus::events::WORK_SUBJECTS;
use crate::config::BusConfig;
use crate::metrics::Metrics;

/// How long a JetStream API call or a confirmed publish may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NatsBus {
    config: BusConfig,
    metrics: Arc<Metrics>,
    client: async_nats::Client,
    js: jetstream::Context,
    emitted: mpsc::Sender<(String, Bytes)>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    consumers: Mutex<HashMap<String, consumer::PullConsumer>>,
    /// Set when a fetch found its stream or consumer gone.
    lost_queues: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// Reconnect delays: 100 ms doubling to `max`, with up to 50 % jitter.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    super::exponential_backoff(Duration::from_millis(100), attempts.min(10) as u32, max)
}

impl NatsBus {
    /// Connect (in the background: a NATS that is down at start is retried, and
    /// `/ready` says so meanwhile). A malformed URL is an error at once.
    pub async fn connect(config: BusConfig, metrics: Arc<Metrics>) -> Result<NatsBus, BusError> {
        let url_err = |reason: String| BusError::Url {
            url: config.url.clone(),
            reason,
        };
        for server in config.url.split(',') {
            server
                .trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| url_err(e.to_string()))?;
        }
        let max_delay = Duration::from_millis(config.reconnect_max_delay_ms);
        let events = metrics.clone();
        let was_connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        metrics.bus_connected.set(0);
        let client = async_nats::ConnectOptions::new()
            .name("armoricore")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
            .event_callback(move |event| {
                let metrics = events.clone();
                let was_connected = was_connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("bus connected (NATS)");
                            if was_connected.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                metrics.bus_reconnects.inc();
                            }
                            metrics.bus_connected.set(1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("bus disconnected (NATS): reconnecting");
                            metrics.bus_connected.set(0);
                        }
                        other => tracing::warn!(event = %other, "bus (NATS)"),
                    }
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| url_err(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let (emitted, rx) = mpsc::channel(config.buffer_events.max(1));
        let writer = tokio::spawn(write_emitted(client.clone(), rx, metrics.clone()));
        Ok(NatsBus {
            config,
            metrics,
            client,
            js,
            emitted,
            tasks: Mutex::new(vec![writer]),
            consumers: Mutex::default(),
            lost_queues: Default::default(),
        })
    }

    fn consumer_name(&self, subject: &str) -> String {
        format!(
            "{}-{}",
            self.config.consumer_prefix,
            subject.replace('.', "-")
        )
    }

    async fn ensure_streams(&self) -> Result<stream::Stream, BusError> {
        let c = &self.config;
        let work = stream::Config {
            name: c.stream.clone(),
            subjects: WORK_SUBJECTS
                .iter()
                .map(|s| format!("{}{s}", c.subject_prefix))
                .collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(c.work_max_age_s),
            duplicate_window: Duration::from_secs(c.dedupe_window_s),
            ..Default::default()
        };
        let work = self
            .js
            .get_or_create_stream(work)
            .await
            .map_err(BusError::nats)?;
        let dlq = stream::Config {
            name: c.dlq_stream.clone(),
            subjects: vec![format!("{}.>", c.dlq_prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(c.dlq_max_age_s),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(dlq)
            .await
            .map_err(BusError::nats)?;
        Ok(work)
    }

    async fn ensure_consumer(
        &self,
        work: &stream::Stream,
        subject: &str,
    ) -> Result<consumer::PullConsumer, BusError> {
        let name = self.consumer_name(subject);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: format!("{}{subject}", self.config.subject_prefix),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            max_deliver: self.config.max_deliver as i64,
            max_ack_pending: self.config.max_ack_pending,
            ..Default::default()
        };
        match work.create_consumer(config).await {
            Ok(c) => Ok(c),
            Err(e) => {
                // An older server refuses to change an existing durable: keep it.
                let existing = work.get_consumer(&name).await.map_err(BusError::nats)?;
                tracing::warn!(consumer = %name, error = %e, "kept the existing consumer's settings");
                Ok(existing)
            }
        }
    }
}

/// Forward emitted events to NATS, in order; a failed publish is counted.
async fn write_emitted(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    metrics: Arc<Metrics>,
) {
    while let Some((subject, body)) = rx.recv().await {
        if let Err(e) = client.publish(subject, body).await {
            tracing::warn!(error = %e, "bus publish failed");
            metrics.bus_dropped.inc();
        }
    }
}

/// Copy messages that used their last delivery to the dead-letter stream, then
/// remove them from the work stream.
async fn rescue_dead_letters(
    mut advisories: async_nats::Subscriber,
    js: jetstream::Context,
    work: stream::Stream,
    config: BusConfig,
    metrics: Arc<Metrics>,
) {
    while let Some(advisory) = advisories.next().await {
        let Some(seq) = serde_json::from_slice::<serde_json::Value>(&advisory.payload)
            .ok()
            .and_then(|v| v["stream_seq"].as_u64())
        else {
            continue;
        };
        let deliveries = config.max_deliver;
        let message = match work.get_raw_message(seq).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(seq, error = %e, "dead letter already gone from the work stream");
                continue;
            }
        };
        let subject = message
            .subject
            .strip_prefix(config.subject_prefix.as_str())
            .unwrap_or(&message.subject)
            .to_string();
        let body = dead_letter_body(
            &subject,
            &message.payload,
            "max deliveries reached without acknowledgement",
            deliveries,
        );
        let stored = match js
            .publish(dead_letter_subject(&config, &subject), body)
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if !stored {
            tracing::error!(
                seq,
                "could not store a dead letter: left in the work stream"
            );
            continue;
        }
        let _ = work.delete_message(seq).await;
        tracing::warn!(
            subject,
            seq,
            "work message dead-lettered after max deliveries"
        );
        metrics
            .bus_dead_letters
            .with_label_values(&[subject.as_str(), "max_deliveries"])
            .inc();
    }
}

struct NatsAcker(jetstream::message::Acker);

/// Acks are publishes: while NATS is away they wait for room in the client's
/// buffer. Never longer than this, so a job's own timers keep running.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

impl NatsAcker {
    async fn send(&self, kind: AckKind) -> Result<(), BusError> {
        tokio::time::timeout(ACK_TIMEOUT, self.0.ack_with(kind))
            .await
            .map_err(|_| BusError::Nats("ack timed out (NATS unreachable?)".into()))?
            .map_err(BusError::nats)
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.send(AckKind::Ack).await
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.send(AckKind::Nak(delay)).await
    }

    async fn progress(&self) -> Result<(), BusError> {
        self.send(AckKind::Progress).await
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn emit(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        self.emitted
            .try_send((subject.to_string(), body))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.metrics.bus_dropped.inc();
                    BusError::Full
                }
                mpsc::error::TrySendError::Closed(_) => BusError::Closed,
            })
    }

    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        // Same connection as the acks, so in order with them; no flush per event
        // (a round trip each): a redelivered event whose ack was lost republishes
        // its kept result (see the BusBridge).
        let send = self.client.publish(subject.to_string(), body);
        tokio::time::timeout(REQUEST_TIMEOUT, send)
            .await
            .map_err(|_| BusError::Nats("publish timed out (NATS unreachable?)".into()))?
            .map_err(BusError::nats)
    }

    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Message>, BusError> {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(BusError::nats)?;
        Ok(sub
            .map(|m| Message {
                subject: m.subject.to_string(),
                body: m.payload,
            })
            .boxed())
    }

    async fn store_dead_letter(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        let stored = async {
            let ack = self
                .js
                .publish(subject.to_string(), body)
                .await
                .map_err(BusError::nats)?;
            ack.await.map_err(BusError::nats).map(|_| ())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, stored)
            .await
            .map_err(|_| BusError::Nats("dead letter not stored in time".into()))?
    }

    async fn enqueue(&self, subject: &str, event_id: &str, body: Bytes) -> Result<(), BusError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(event_id);
        let ack = self
            .js
            .send_publish(subject.to_string(), publish)
            .await
            .map_err(BusError::nats)?;
        ack.await.map_err(BusError::nats)?;
        Ok(())
    }

    async fn prepare(&self) -> Result<(), BusError> {
        let lost = self
            .lost_queues
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if !lost && self.consumers.lock().len() == WORK_SUBJECTS.len() {
            return Ok(());
        }
        let work = self.ensure_streams().await?;
        let mut consumers = HashMap::new();
        for subject in WORK_SUBJECTS {
            let c = self.ensure_consumer(&work, subject).await?;
            consumers.insert(format!("{}{subject}", self.config.subject_prefix), c);
        }
        // Subscribed before any fetch, so no advisory is raised before we listen.
        let advisory = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.config.stream
        );
        let advisories = self
            .client
            .queue_subscribe(advisory, "armoricore-dlq".into())
            .await
            .map_err(BusError::nats)?;
        for old in self.tasks.lock().drain(1..) {
            old.abort(); // a previous rescue task, when the queues are prepared again
        }
        let rescue = tokio::spawn(rescue_dead_letters(
            advisories,
            self.js.clone(),
            work,
            self.config.clone(),
            self.metrics.clone(),
        ));
        self.tasks.lock().push(rescue);
        *self.consumers.lock() = consumers;
        tracing::info!(stream = %self.config.stream, "bus work queues ready (JetStream)");
        Ok(())
    }

    async fn fetch(
        &self,
        subject: &str,
        max: usize,
        wait: Duration,
    ) -> Result<BoxStream<'static, Delivery>, BusError> {
        let consumer = self
            .consumers
            .lock()
            .get(subject)
            .cloned()
            .ok_or_else(|| BusError::Nats(format!("no work queue for {subject}")))?;
        let batch = consumer
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(BusError::nats)?;
        let lost = self.lost_queues.clone();
        let deliveries = batch
            .take_while(move |m| {
                if let Err(e) = m {
                    tracing::warn!(error = %e, "bus fetch ended");
                    // A deleted stream or consumer: prepare the queues again.
                    if e.to_string().to_ascii_lowercase().contains("not found") {
                        lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                std::future::ready(m.is_ok())
            })
            .filter_map(|m| async move {
                let m = m.ok()?;
                let delivered = m.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
                let (message, acker) = m.split();
                Some(Delivery {
                    subject: message.subject.to_string(),
                    body: message.payload,
                    delivered,
                    acker: Box::new(NatsAcker(acker)),
                })
            });
        Ok(deliveries.boxed())
    }

    async fn backlog(&self, subject: &str) -> Option<super::Backlog> {
        let consumer = self.consumers.lock().get(subject).cloned()?;
        let info = consumer.get_info().await.ok()?;
        Some(super::Backlog {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
        })
    }

    async fn flush(&self) {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.client.flush()).await;
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}
