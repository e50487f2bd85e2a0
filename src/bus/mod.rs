//! The message bus seam: how Armoricore exchanges events with the rest of a product.
//!
//! Only the trait and the in-process implementation exist so far; the NATS
//! implementation, JetStream work subjects and event schemas come with the bus issue.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

/// A published event: subject and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub subject: String,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus closed")]
    Closed,
}

/// Publish/subscribe between this node and external systems.
#[async_trait]
pub trait Bus: Send + Sync {
    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), BusError>;
    /// Every event published from now on (filtering by subject is the caller's).
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// The default bus: events stay inside this process.
pub struct InProcessBus {
    tx: broadcast::Sender<Event>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> InProcessBus {
        InProcessBus {
            tx: broadcast::channel(capacity).0,
        }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), BusError> {
        // No subscriber is not an error: nobody is interested yet.
        let _ = self.tx.send(Event {
            subject: subject.to_string(),
            body,
        });
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_round_trip() {
        let bus = InProcessBus::new(8);
        let mut rx = bus.subscribe();
        bus.publish("chat.message", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let e = rx.recv().await.unwrap();
        assert_eq!(e.subject, "chat.message");
    }
}
