//! The message writer: one task that commits messages in batches.
//!
//! Publishers hand a message over and wait for its [`Ticket`]. The writer takes
//! everything waiting (up to `database.batch_max`) and commits it atomically, so
//! while one batch commits the next one fills: the busier the node, the bigger the
//! batches, and the commit cost is shared. SQLite commits one batch at a time (it
//! has one writer anyway); PostgreSQL a few at once, on separate connections, so
//! its commit latency (a WAL flush) does not cap throughput.
//!
//! Order: batches are formed in submission order, and every ticket of a batch has
//! its [`Status`] set before any of them is answered. Whoever orders broadcasts
//! (`crate::history`) sends a topic's messages in offset order as their statuses
//! become final, whichever batch commits first.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::{Store, StoredMessage};

/// A submitted message's fate, shared with whoever orders broadcasts.
#[derive(Clone, Default)]
pub struct Status(Arc<AtomicU8>);

impl Status {
    const PENDING: u8 = 0;
    const COMMITTED: u8 = 1;
    const FAILED: u8 = 2;

    fn set(&self, committed: bool) {
        let v = if committed {
            Self::COMMITTED
        } else {
            Self::FAILED
        };
        self.0.store(v, Ordering::Release);
    }

    /// `None` while pending; then whether it was committed.
    pub fn committed(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            Self::PENDING => None,
            v => Some(v == Self::COMMITTED),
        }
    }
}

/// Waits for one message's commit.
pub struct Ticket {
    pub status: Status,
    done: oneshot::Receiver<Result<(), String>>,
}

impl Ticket {
    /// Ok once committed; the reason otherwise.
    pub async fn committed(self) -> Result<(), String> {
        self.done
            .await
            .unwrap_or_else(|_| Err("database writer stopped".into()))
    }
}

struct Submitted {
    message: StoredMessage,
    status: Status,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle publishers submit messages through.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Submitted>,
}

impl Writer {
    /// Start the writer task over `store`, committing at most `batch_max` per batch
    /// and waiting up to `linger` for a batch to fill.
    pub fn start(store: Arc<Store>, batch_max: usize, linger: Duration) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = match store.backend() {
            super::Backend::Sqlite => 1,
            super::Backend::Postgres => 4,
        };
        tokio::spawn(run(store, rx, batch_max.max(1), linger, in_flight));
        Writer { tx }
    }

    /// Queue `message`; its ticket resolves once its batch is committed (or failed).
    pub fn submit(&self, message: StoredMessage) -> Ticket {
        let (done, rx) = oneshot::channel();
        let status = Status::default();
        let submitted = Submitted {
            message,
            status: status.clone(),
            done,
        };
        if let Err(mpsc::error::SendError(s)) = self.tx.send(submitted) {
            s.status.set(false);
            let _ = s.done.send(Err("database writer stopped".into()));
        }
        Ticket { status, done: rx }
    }
}

async fn run(
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<Submitted>,
    batch_max: usize,
    linger: Duration,
    in_flight: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    loop {
        // A free commit slot first: meanwhile the next batch fills.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(batch_max);
        if rx.recv_many(&mut batch, batch_max).await == 0 {
            return; // every Writer handle is gone
        }
        // A little longer for a fuller batch: fewer, bigger commits cost less
        // (each commit writes its pages to the log) at a bounded wait.
        if batch.len() < batch_max && !linger.is_zero() {
            let until = tokio::time::Instant::now() + linger;
            while batch.len() < batch_max {
                let room = batch_max - batch.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            write(&store, batch).await;
            drop(slot);
        });
    }
}

/// Longest a batch may take to commit before it counts as failed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Commit one batch, settle every ticket's status, then answer. A failed batch is
/// tried once more, then row by row, so one row the database refuses fails alone.
async fn write(store: &Store, batch: Vec<Submitted>) {
    let (messages, tickets): (Vec<StoredMessage>, Vec<_>) = batch
        .into_iter()
        .map(|s| (s.message, (s.status, s.done)))
        .unzip();
    let started = Instant::now();
    let mut result = commit(store, &messages).await;
    if result.is_err() {
        // Once more: a lock or a dropped connection passes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        result = commit(store, &messages).await;
    }
    let metrics = &store.metrics;
    let results: Vec<Result<(), String>> = match result {
        Ok(()) => {
            metrics
                .store_write_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.store_batch_messages.observe(messages.len() as f64);
            vec![Ok(()); messages.len()]
        }
        Err(reason) if messages.len() == 1 => vec![Err(reason)],
        Err(_) => {
            let mut each = Vec::with_capacity(messages.len());
            for m in &messages {
                each.push(commit(store, std::slice::from_ref(m)).await);
            }
            each
        }
    };
    for (((status, _), result), m) in tickets.iter().zip(&results).zip(&messages) {
        if let Err(reason) = result {
            metrics.store_errors.with_label_values(&["write"]).inc();
            tracing::warn!(topic = %m.topic, offset = m.offset, %reason, "could not store a message");
        }
        status.set(result.is_ok());
    }
    for ((_, done), result) in tickets.into_iter().zip(results) {
        let _ = done.send(result);
    }
}

/// Insert `messages`; a panic in the driver, or a commit that does not end, is a
/// failed batch, not a dead writer.
async fn commit(store: &Store, messages: &[StoredMessage]) -> Result<(), String> {
    let insert = AssertUnwindSafe(store.insert_messages(messages)).catch_unwind();
    match tokio::time::timeout(COMMIT_TIMEOUT, insert).await {
        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
        Ok(Err(_)) => Err("database driver panicked".into()),
        Err(_) => Err(format!("no commit within {COMMIT_TIMEOUT:?}")),
    }
}
