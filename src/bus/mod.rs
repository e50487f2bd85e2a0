//! The message bus: how Armoricore exchanges events with the rest of a product.
//!
//! Two kinds of traffic, as in the original Armoricore:
//!
//! ```text
//! plain events  publish / subscribe      media.ready, notification.sent, chat.message, ...
//!               at most once, to whoever listens now
//! work          enqueue / fetch + ack    media.uploaded, notification.requested,
//!               at least once            transcription.requested, translation.requested
//! ```
//!
//! A work message is handed out as a [`Delivery`] and stays owed until it is
//! acknowledged: a delivery dropped without an ack (its node died, its handler hung)
//! comes back after `bus.ack_wait_ms`, on this node or any other; one negatively
//! acknowledged comes back after its backoff; after `bus.max_deliver` deliveries it
//! goes to the dead-letter subject `armoricore.dlq.<subject>` instead of vanishing.
//!
//! [`memory::MemoryBus`] is the default (nothing to install; work lives as long as
//! the process). [`nats::NatsBus`] is used when `bus.url` (`MESSAGE_BUS_URL`) is set:
//! core NATS for plain events, JetStream durable consumers for work.

pub mod events;
pub mod memory;
pub mod nats;
pub mod outlet;

pub use outlet::{Outlet, Sent};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use crate::config::BusConfig;
use crate::metrics::Metrics;

/// A plain event as received: the subject it came on and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus closed")]
    Closed,
    #[error("bus buffer full: event dropped")]
    Full,
    #[error("invalid bus URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("bus: {0}")]
    Nats(String),
    #[error("could not record the work: {0}")]
    Journal(String),
}

impl BusError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> BusError {
        BusError::Nats(e.to_string())
    }
}

/// Settles one work delivery. Exactly one of `ack`, `nak` or `term` ends it;
/// `progress` may come any number of times before.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done with it (success or final failure): never delivered again.
    async fn ack(&self) -> Result<(), BusError>;
    /// Not done: deliver again after `delay` (at once when `None`).
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Still working: restart the ack-wait clock (`+WPI`).
    async fn progress(&self) -> Result<(), BusError>;
}

/// One delivery of a work message.
pub struct Delivery {
    pub subject: String,
    pub body: Bytes,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub delivered: u32,
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

/// Work waiting in a queue, and work handed out but not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    pub ack_pending: u64,
}

/// Publish/subscribe and acknowledged work, between this node and the outside.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Queue a plain event without waiting (the hot paths use this). A full buffer
    /// (the bus has been unreachable for a while) refuses with [`BusError::Full`].
    fn emit(&self, subject: &str, body: Bytes) -> Result<(), BusError>;

    /// Publish a plain event, waiting while the bus's own buffer is full. Events and
    /// acks leave in the order they were sent: a job's result always goes out before
    /// the ack that follows it.
    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), BusError>;

    /// Every plain event on `subject` (NATS wildcards `*` and `>` allowed) from now on.
    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Message>, BusError>;

    /// Store a dead letter (`body` from [`dead_letter_body`]) on `subject`; returns
    /// once it is kept (NATS: acknowledged by the dead-letter stream), so the
    /// event it replaces may be acknowledged.
    async fn store_dead_letter(&self, subject: &str, body: Bytes) -> Result<(), BusError>;

    /// Add a work message; returns once it is stored (JetStream: acknowledged by
    /// the stream). `event_id` dedupes repeated publishes of the same event.
    async fn enqueue(&self, subject: &str, event_id: &str, body: Bytes) -> Result<(), BusError>;

    /// Make sure the work queues exist (JetStream streams and durable consumers).
    /// Idempotent; the bridge retries it until it succeeds.
    async fn prepare(&self) -> Result<(), BusError>;

    /// Up to `max` deliveries of `subject`, yielded as they come, waiting at most
    /// `wait` in all. Taking only what can be worked on now keeps the rest
    /// available to other nodes (nothing waits, unacknowledged, in a local buffer).
    async fn fetch(
        &self,
        subject: &str,
        max: usize,
        wait: Duration,
    ) -> Result<BoxStream<'static, Delivery>, BusError>;

    /// How much work of `subject` waits, and how much is handed out unacknowledged
    /// (across every node): the bus lag.
    async fn backlog(&self, subject: &str) -> Option<Backlog>;

    /// Wait (briefly) until everything sent so far, acks included, has left the node.
    async fn flush(&self) {}

    /// Whether the bus is reachable now (`/ready`).
    fn connected(&self) -> bool;

    /// `memory` or `nats`, for logs and `/ready`.
    fn kind(&self) -> &'static str;
}

/// The bus the configuration asks for: NATS when `bus.url` is set, else in-process.
///
/// The embedded bus records its work in `journal` (the node's job records), so a
/// restarted node takes it up again; NATS keeps work itself.
pub async fn connect(
    config: &BusConfig,
    metrics: Arc<Metrics>,
    journal: Option<memory::Journal>,
) -> Result<Arc<dyn Bus>, BusError> {
    if config.url.is_empty() {
        let bus = memory::MemoryBus::new(config.clone(), metrics, journal);
        match bus.restore().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "re-queued work left unfinished by the last run"),
            Err(e) => tracing::warn!(error = %e, "could not re-queue unfinished work"),
        }
        Ok(Arc::new(bus))
    } else {
        Ok(Arc::new(
            nats::NatsBus::connect(config.clone(), metrics).await?,
        ))
    }
}

/// The dead-letter subject of `subject`: `<dlq_prefix>.<subject>`.
pub fn dead_letter_subject(config: &BusConfig, subject: &str) -> String {
    format!("{}.{subject}", config.dlq_prefix)
}

/// The body of a dead letter: why, where from, how often tried, and the event
/// itself (as JSON when it was JSON, else as text), so nothing is lost.
///
/// ```text
/// {"reason": "...", "subject": "media.uploaded", "delivered": 5,
///  "received_at": "2026-11-27T10:00:00.000Z", "event": {...} | "raw": "..."}
/// ```
pub fn dead_letter_body(subject: &str, body: &[u8], reason: &str, delivered: u32) -> Bytes {
    let mut letter = json!({
        "reason": reason,
        "subject": subject,
        "delivered": delivered,
        "received_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    });
    match serde_json::from_slice::<Value>(body) {
        Ok(event) => letter["event"] = event,
        Err(_) => letter["raw"] = Value::String(String::from_utf8_lossy(body).into_owned()),
    }
    Bytes::from(letter.to_string())
}

/// Whether `subject` matches the NATS `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// `initial` doubling per attempt (0 for the first retry), capped at `max`, plus up
/// to 50 % jitter: reconnects and whole-file upload retries.
pub fn exponential_backoff(initial: Duration, attempt: u32, max: Duration) -> Duration {
    let capped = initial.saturating_mul(1 << attempt.min(20)).min(max);
    capped + capped.mul_f64(rand::random::<f64>() * 0.5)
}

/// The wait before redelivery `delivered` + 1, from the configured backoff list
/// (its last value repeats).
pub fn backoff(config: &BusConfig, delivered: u32) -> Duration {
    let i = (delivered.max(1) as usize - 1).min(config.backoff_ms.len().saturating_sub(1));
    Duration::from_millis(config.backoff_ms.get(i).copied().unwrap_or(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("media.ready", "media.ready"));
        assert!(!subject_matches("media.ready", "media.readyx"));
        assert!(subject_matches("media.*", "media.ready"));
        assert!(!subject_matches("media.*", "media.ready.x"));
        assert!(subject_matches(
            "armoricore.dlq.>",
            "armoricore.dlq.media.uploaded"
        ));
        assert!(!subject_matches("armoricore.dlq.>", "armoricore.dlq"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn dead_letters_keep_the_event() {
        let b = dead_letter_body("media.uploaded", br#"{"event_id":"e1"}"#, "bad", 3);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["event"]["event_id"], "e1");
        assert_eq!(v["delivered"], 3);
        assert_eq!(v["reason"], "bad");
        let b = dead_letter_body("media.uploaded", b"not json", "bad", 1);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["raw"], "not json");
        assert!(v.get("event").is_none());
    }

    #[test]
    fn backoff_repeats_its_last_step() {
        let mut c = crate::config::Config::defaults().bus;
        c.backoff_ms = vec![100, 200];
        assert_eq!(backoff(&c, 1), Duration::from_millis(100));
        assert_eq!(backoff(&c, 2), Duration::from_millis(200));
        assert_eq!(backoff(&c, 9), Duration::from_millis(200));
    }
}
