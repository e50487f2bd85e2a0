//! Jobs: the work the bus hands to this node, and who does it.
//!
//! The BusBridge takes a work event (`media.uploaded`, `notification.requested`,
//! `transcription.requested`, `translation.requested`) off the bus and gives it to
//! the [`JobHandler`] registered for its subject — the supervisor that owns that
//! kind of job. The handler's [`Outcome`] decides what the bridge does next:
//!
//! ```text
//! Done(payload)                 publish the result event (media.ready, ...), ack
//! Failed { retry: true }        nak with backoff; after max_deliver: *.failed + dead letter, ack
//! Failed { retry: false }       publish *.failed {reason}, ack
//! GaveUp                        publish *.failed {reason, ...}, dead letter, ack
//! (panic, timeout)              as Failed { retry: true }
//! (no handler for the subject)  publish *.failed {reason: "not_supported"}, ack
//! ```
//!
//! While a job runs, the bridge keeps its delivery leased (in-progress acks), so a
//! job may take hours; if the node dies, the lease lapses and another node gets it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::bus::Outlet;
use crate::bus::events::{self, Envelope};

/// One work event handed to its handler.
pub struct Job {
    /// The work subject, without prefix (`media.uploaded`).
    pub subject: &'static str,
    pub event: Envelope,
    /// 1 on the first delivery.
    pub delivered: u32,
    /// No retry follows if this attempt fails.
    pub last_attempt: bool,
    /// For events the job publishes on its way (`media.progress`, `captioning.complete`).
    pub outlet: Outlet,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The payload of the result event (see [`result_subject`]).
    Done(Map<String, Value>),
    /// Failed; `retry` when another attempt may succeed (a provider timed out),
    /// not when it cannot (broken media, a revoked device token).
    Failed { reason: String, retry: bool },
    /// Failed after the handler's own retries (a notification whose every target
    /// failed): `*.failed` with `details` merged in, and the dead-letter subject.
    GaveUp {
        reason: String,
        details: Map<String, Value>,
    },
}

/// Does one kind of job. Implementations run the job in their own supervised
/// actor and wait for it; a panic here is contained by the bridge all the same.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn run(&self, job: Job) -> Outcome;

    /// Jobs this handler runs at once (`None`: `bus.concurrency`): the bridge
    /// takes no more than that off the bus, so the rest stay available to other
    /// nodes and no job's timeout runs while it waits for a slot here.
    fn capacity(&self) -> Option<usize> {
        None
    }
}

/// The handlers of this node, by work subject.
#[derive(Clone, Default)]
pub struct Jobs {
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
}

impl Jobs {
    /// No handlers: every work event is answered `not_supported`.
    pub fn new() -> Jobs {
        Jobs::default()
    }

    /// Handle the work subject `subject` (one of [`events::WORK_SUBJECTS`]) with `handler`.
    pub fn with(mut self, subject: &str, handler: impl JobHandler) -> Jobs {
        let subject = events::WORK_SUBJECTS
            .iter()
            .find(|s| **s == subject)
            .unwrap_or_else(|| panic!("{subject} is not a work subject"));
        self.handlers.insert(subject, Arc::new(handler));
        self
    }

    pub fn get(&self, subject: &str) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(subject).cloned()
    }
}

/// The event a successful job publishes.
pub fn result_subject(work: &str) -> Option<&'static str> {
    Some(match work {
        events::MEDIA_UPLOADED => events::MEDIA_READY,
        events::NOTIFICATION_REQUESTED => events::NOTIFICATION_SENT,
        events::TRANSCRIPTION_REQUESTED => events::TRANSCRIPTION_COMPLETE,
        events::TRANSLATION_REQUESTED => events::TRANSLATION_COMPLETE,
        _ => return None,
    })
}

/// The fields of a request that identify it, copied into its `*.failed` event so
/// the requester can tell which request failed.
const REQUEST_IDS: &[&str] = &[
    "media_id",
    "user_id",
    "notification_id",
    "notification_type",
    "request_id",
    "language",
    "from_language",
    "to_language",
];

/// The payload of `<kind>.failed` for the request `event`.
pub fn failure_payload(event: &Envelope, reason: &str) -> Map<String, Value> {
    let mut payload: Map<String, Value> = REQUEST_IDS
        .iter()
        .filter_map(|k| event.payload.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    payload.insert("reason".into(), Value::String(reason.to_string()));
    payload.insert(
        "request_event_id".into(),
        Value::String(event.event_id.clone()),
    );
    payload
}
