//! The [`Outlet`]: how the node publishes its own events (chat.message,
//! presence.update, job results) in the original envelope.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::events::{self, Envelope};

use super::{Bus, BusError};
use crate::config::BusConfig;
use crate::metrics::Metrics;

/// Builds envelopes (`event_id`, `timestamp`, `source` filled in), checks them
/// against their subject's schema, adds the subject prefix and puts them on the bus.
#[derive(Clone)]
pub struct Outlet {
    bus: Arc<dyn Bus>,
    config: Arc<BusConfig>,
    metrics: Arc<Metrics>,
}

impl Outlet {
    pub fn new(bus: Arc<dyn Bus>, config: BusConfig, metrics: Arc<Metrics>) -> Outlet {
        Outlet {
            bus,
            config: Arc::new(config),
            metrics,
        }
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// `subject` as it is on the wire (with `bus.subject_prefix`).
    pub fn wire_subject(&self, subject: &str) -> String {
        format!("{}{subject}", self.config.subject_prefix)
    }

    fn envelope(&self, subject: &str, payload: Map<String, Value>) -> Option<Envelope> {
        match events::build(subject, &self.config.source, payload) {
            Ok(env) => Some(env),
            Err(invalid) => {
                // Our own event failing our own schema is a bug: say so, send nothing.
                tracing::error!(subject, %invalid, "refusing to publish an invalid event");
                None
            }
        }
    }

    /// Queue an event without waiting (hot paths). Lost only when the bus has been
    /// unreachable long enough to fill `bus.buffer_events` (counted).
    pub fn emit(&self, subject: &str, payload: Map<String, Value>) {
        let Some(env) = self.envelope(subject, payload) else {
            return;
        };
        match self.bus.emit(&self.wire_subject(subject), env.to_bytes()) {
            Ok(()) => self
                .metrics
                .bus_events_out
                .with_label_values(&[subject])
                .inc(),
            Err(e) => tracing::warn!(subject, error = %e, "event not published"),
        }
    }

    /// Publish an event, in order with everything this node sends after it (its
    /// acks included); returns what was sent, to send again if asked.
    pub async fn publish(
        &self,
        subject: &str,
        payload: Map<String, Value>,
    ) -> Result<Sent, BusError> {
        let env = self
            .envelope(subject, payload)
            .ok_or_else(|| BusError::Invalid(subject.to_string()))?;
        let sent = Sent {
            subject: self.wire_subject(subject),
            body: env.to_bytes(),
        };
        self.bus.publish(&sent.subject, sent.body.clone()).await?;
        self.metrics
            .bus_events_out
            .with_label_values(&[subject])
            .inc();
        Ok(sent)
    }
}

/// An event as it went out (wire subject and body).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub subject: String,
    pub body: bytes::Bytes,
}
