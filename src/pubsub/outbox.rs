//! The outbound queue of one connection: bounded, shared by every producer
//! (its session, the fan-out, presence), drained by the transport's single writer.
//!
//! Producers never wait: a full queue means the client does not keep up, and the
//! connection is closed as a slow consumer rather than buffering without bound.
//! The queue is bounded twice: in frames, and in bytes (`socket.outbound_queue_bytes`,
//! 1 MiB), so a stalled client on a busy topic costs at most that much memory.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use parking_lot::Mutex;

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

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const URGENT: u8 = 2;

struct Shared {
    /// OPEN, CLOSING (drain then close) or URGENT (close now): read on every push.
    state: AtomicU8,
    close: Mutex<Option<Close>>,
    /// Wakes the writer (a stored permit, so a close is never missed).
    writer: Notify,
    /// Wakes everyone waiting in [`Outbox::closed_now`].
    closed: Notify,
    /// Bytes of the frames queued and not yet taken by the writer.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
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

/// A queue of at most `capacity` frames, with no bound in bytes.
pub fn channel(capacity: usize) -> (Outbox, OutboxReceiver) {
    bounded(capacity, usize::MAX)
}

/// A queue of at most `capacity` frames and `max_bytes` bytes.
pub fn bounded(capacity: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        state: AtomicU8::new(OPEN),
        close: Mutex::new(None),
        writer: Notify::new(),
        closed: Notify::new(),
        queued_bytes: AtomicUsize::new(0),
        max_bytes,
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
        if self.shared.state.load(Ordering::Acquire) != OPEN {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.tx.try_send(frame).map_err(|e| {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => PushError::Full,
                mpsc::error::TrySendError::Closed(_) => PushError::Closed,
            }
        })
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Close after the frames already queued have been written. The first close
    /// wins, except that [`Outbox::close_now`] overrides a pending graceful close.
    pub fn close(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        self.set_close(code, reason.into(), CLOSING);
    }

    /// Close now, dropping whatever is still queued (slow consumers, crashes).
    pub fn close_now(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        self.set_close(code, reason.into(), URGENT);
    }

    fn set_close(&self, code: u16, reason: Cow<'static, str>, level: u8) {
        let mut slot = self.shared.close.lock();
        if self.shared.state.load(Ordering::Acquire) == URGENT {
            return;
        }
        *slot = Some(Close { code, reason });
        self.shared.state.store(level, Ordering::Release);
        drop(slot);
        self.shared.writer.notify_one();
        self.shared.closed.notify_waiters();
    }

    /// Has a close been requested, or is the writer gone?
    pub fn is_closing(&self) -> bool {
        self.tx.is_closed() || self.shared.state.load(Ordering::Acquire) != OPEN
    }

    /// Resolves once an urgent close ([`Outbox::close_now`]) has been requested
    /// (or the writer is gone): a write to a stalled client must give way to it.
    pub async fn closed_now(&self) {
        loop {
            let notified = self.shared.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.state.load(Ordering::Acquire) == URGENT {
                return;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.tx.closed() => return,
            }
        }
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
    fn taken(&self, frame: Frame) -> Frame {
        self.shared
            .queued_bytes
            .fetch_sub(frame.len(), Ordering::AcqRel);
        frame
    }

    fn close_frame(&self) -> Close {
        self.shared.close.lock().clone().unwrap_or(Close {
            code: 1000,
            reason: Cow::Borrowed(""),
        })
    }

    /// The next thing to write: queued frames in order, then the close.
    pub async fn recv(&mut self) -> Outbound {
        loop {
            let state = self.shared.state.load(Ordering::Acquire);
            if state == URGENT {
                return Outbound::Close(self.close_frame());
            }
            match self.rx.try_recv() {
                Ok(frame) => return Outbound::Frame(self.taken(frame)),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Outbound::Close(self.close_frame());
                }
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if state == CLOSING {
                return Outbound::Close(self.close_frame());
            }
            tokio::select! {
                frame = self.rx.recv() => if let Some(frame) = frame {
                    return Outbound::Frame(self.taken(frame));
                },
                _ = self.shared.writer.notified() => {}
            }
        }
    }

    /// A frame that is already queued, without waiting (for batching writes).
    pub fn try_recv(&mut self) -> Option<Frame> {
        if self.shared.state.load(Ordering::Acquire) == URGENT {
            return None;
        }
        self.rx.try_recv().ok().map(|f| self.taken(f))
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
    async fn the_byte_bound_counts_what_the_writer_has_not_taken() {
        let (tx, mut rx) = bounded(100, 10);
        tx.push(Frame::from("12345")).unwrap();
        tx.push(Frame::from("1234")).unwrap();
        assert_eq!(
            tx.push(Frame::from("12")),
            Err(PushError::Full),
            "11 bytes > 10"
        );
        assert_eq!(tx.queued_bytes(), 9);
        assert!(matches!(rx.recv().await, Outbound::Frame(_)));
        assert_eq!(tx.queued_bytes(), 4);
        tx.push(Frame::from("12")).unwrap();
    }

    #[tokio::test]
    async fn urgent_close_overrides_a_graceful_one() {
        let (tx, mut rx) = channel(4);
        tx.push(Frame::from("a")).unwrap();
        tx.close(1001, "shutting down");
        tx.close_now(1008, "slow consumer");
        tx.close(1000, "ignored");
        assert!(matches!(rx.recv().await, Outbound::Close(c) if c.code == 1008));
    }

    #[tokio::test]
    async fn closed_now_resolves_for_every_waiter_on_an_urgent_close() {
        let (tx, _rx) = channel(4);
        let (a, b) = (tx.clone(), tx.clone());
        let wa = tokio::spawn(async move { a.closed_now().await });
        let wb = tokio::spawn(async move { b.closed_now().await });
        tokio::task::yield_now().await;
        tx.close(1000, "");
        tokio::task::yield_now().await;
        assert!(!wa.is_finished(), "a graceful close is not urgent");
        tx.close_now(1008, "slow consumer");
        wa.await.unwrap();
        wb.await.unwrap();
        tx.closed_now().await; // already closed: returns at once
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
