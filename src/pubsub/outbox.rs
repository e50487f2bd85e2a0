//! The outbound queue of one connection: bounded, shared by every producer
//! (its session, the fan-out, presence), drained by the transport's single writer.
//!
//! Producers never wait: a full queue means the client does not keep up, and the
//! connection is closed as a slow consumer rather than buffering without bound.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::protocols::phoenix::Frame;

/// A WebSocket close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Outbound {
    Frame(Frame),
    Close(Close),
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at capacity: the client is a slow consumer.
    Full,
    /// The connection is closing or gone.
    Closed,
}

struct Shared {
    /// Set once; `urgent` closes skip the frames still queued.
    close: Mutex<Option<(Close, bool)>>,
    notify: Notify,
}

/// Producer handle; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
}

/// The writer's end.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
}

/// A queue of at most `capacity` frames.
pub fn channel(capacity: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        close: Mutex::new(None),
        notify: Notify::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        OutboxReceiver { rx, shared },
    )
}

impl Outbox {
    /// Queue a frame without waiting.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        if self.is_closing() {
            return Err(PushError::Closed);
        }
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PushError::Full,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })
    }

    /// Close after the frames already queued have been written.
    pub fn close(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        self.set_close(code, reason.into(), false);
    }

    /// Close now, dropping whatever is still queued (slow consumers, crashes).
    pub fn close_now(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        self.set_close(code, reason.into(), true);
    }

    fn set_close(&self, code: u16, reason: Cow<'static, str>, urgent: bool) {
        let mut slot = self.shared.close.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((Close { code, reason }, urgent));
            self.shared.notify.notify_one();
        }
    }

    /// Has a close been requested, or is the writer gone?
    pub fn is_closing(&self) -> bool {
        self.tx.is_closed()
            || self
                .shared
                .close
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OutboxReceiver {
    fn close_request(&self) -> Option<(Close, bool)> {
        self.shared
            .close
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next thing to write: queued frames in order, then the close.
    pub async fn recv(&mut self) -> Outbound {
        loop {
            let close = self.close_request();
            if let Some((close, true)) = close {
                return Outbound::Close(close);
            }
            match self.rx.try_recv() {
                Ok(frame) => return Outbound::Frame(frame),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Outbound::Close(close.map(|c| c.0).unwrap_or(Close {
                        code: 1000,
                        reason: Cow::Borrowed(""),
                    }));
                }
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if let Some((close, _)) = close {
                return Outbound::Close(close);
            }
            tokio::select! {
                frame = self.rx.recv() => if let Some(frame) = frame {
                    return Outbound::Frame(frame);
                },
                _ = self.shared.notify.notified() => {}
            }
        }
    }

    /// A frame that is already queued, without waiting (for batching writes).
    pub fn try_recv(&mut self) -> Option<Frame> {
        if matches!(self.close_request(), Some((_, true))) {
            return None;
        }
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_then_close() {
        let (tx, mut rx) = channel(4);
        tx.push(Frame::from("a")).unwrap();
        tx.close(1001, "bye");
        assert_eq!(tx.push(Frame::from("b")), Err(PushError::Closed));
        assert!(matches!(rx.recv().await, Outbound::Frame(f) if f.as_str() == "a"));
        assert!(matches!(rx.recv().await, Outbound::Close(c) if c.code == 1001));
    }

    #[tokio::test]
    async fn full_queue_and_urgent_close() {
        let (tx, mut rx) = channel(2);
        tx.push(Frame::from("a")).unwrap();
        tx.push(Frame::from("b")).unwrap();
        assert_eq!(tx.len(), 2);
        assert_eq!(tx.push(Frame::from("c")), Err(PushError::Full));
        tx.close_now(1008, "slow consumer");
        assert!(matches!(rx.recv().await, Outbound::Close(c) if c.code == 1008));
    }

    #[tokio::test]
    async fn recv_wakes_on_close() {
        let (tx, mut rx) = channel(2);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.close(1000, "done");
        assert!(matches!(waiter.await.unwrap(), Outbound::Close(c) if c.code == 1000));
    }
}
