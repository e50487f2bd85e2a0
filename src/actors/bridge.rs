//! BusBridge: the node's end of the message bus.
//!
//! Supervised by the RootSupervisor (permanent). It owns three kinds of tasks:
//!
//! - one puller per work subject: takes only as many deliveries as it has free job
//!   slots (`bus.concurrency`), checks each event, drops repeats of an `event_id`
//!   already handled, and runs the subject's [`JobHandler`] while keeping the
//!   delivery leased; acknowledges when the job has ended (see [`crate::jobs`]);
//! - one result listener: `media.ready`, `media.progress`, `media.failed`,
//!   `notification.sent`, `*.complete` become pushes to `user:{user_id}` and
//!   `media:{media_id}`;
//! - every running job.
//!
//! Invalid events go to `armoricore.dlq.<subject>` with the reason. A task that
//! cannot go on (its subscription ended) fails the bridge, which is restarted; on
//! stop, running jobs are negatively acknowledged so another node takes them at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Map, Value};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::bus::events::{self, Envelope, RESULT_SUBJECTS, WORK_SUBJECTS};
use crate::bus::{Acker, Delivery, Sent, backoff, dead_letter_body, dead_letter_subject};
use crate::hub::Hub;
use crate::jobs::{self, Job, Outcome};
use crate::store::JobStatus;

/// How long one fetch waits for work before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(5);
/// A repeat whose kept result could not be republished is offered again after this.
const RUNNING_RETRY: Duration = Duration::from_secs(1);

/// What became of an `event_id` on this node, for `bus.dedupe_window_s`.
///
/// A handled event keeps the event it produced: if its ack was lost (the
/// connection broke right after) the redelivery sends that result again instead
/// of running the job twice, or dropping the result.
#[derive(Default)]
pub struct Handled {
    ids: DashMap<String, Mark>,
    /// Handled ids in the order they ended, for expiry in O(1) per id.
    order: parking_lot::Mutex<std::collections::VecDeque<(Instant, String)>>,
}

/// At most this many handled ids are remembered; past it the oldest are forgotten
/// early (at 1,000 events/s the default 600 s window would need 600,000).
const HANDLED_MAX: usize = 200_000;

#[derive(Clone)]
struct Mark {
    done: bool,
    at: Instant,
    sent: Option<Sent>,
}

/// Whether an event is new here.
#[derive(Debug, PartialEq)]
enum Seen {
    New,
    Running,
    /// Handled within the window; what it published.
    Done(Option<Sent>),
}

impl Handled {
    fn begin(&self, id: &str, window: Duration) -> Seen {
        let now = Instant::now();
        self.expire(now, window);
        let running = Mark {
            done: false,
            at: now,
            sent: None,
        };
        match self.ids.entry(id.to_string()) {
            dashmap::Entry::Occupied(mut e) => {
                let mark = e.get();
                if !mark.done {
                    Seen::Running
                } else if now.duration_since(mark.at) < window {
                    Seen::Done(mark.sent.clone())
                } else {
                    e.insert(running);
                    Seen::New
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(running);
                Seen::New
            }
        }
    }

    /// Forget ids handled longer than `window` ago (or beyond [`HANDLED_MAX`]).
    fn expire(&self, now: Instant, window: Duration) {
        let mut order = self.order.lock();
        while let Some((at, _)) = order.front() {
            if now.duration_since(*at) < window && order.len() <= HANDLED_MAX {
                break;
            }
            let (at, id) = order.pop_front().expect("front exists");
            // Only if it was not handled again since.
            self.ids.remove_if(&id, |_, m| m.done && m.at == at);
        }
    }

    fn done(&self, id: &str, sent: Option<Sent>) {
        let at = Instant::now();
        let mark = Mark {
            done: true,
            at,
            sent,
        };
        self.ids.insert(id.to_string(), mark);
        self.order.lock().push_back((at, id.to_string()));
    }

    fn forget(&self, id: &str) {
        self.ids.remove(id);
    }
}

/// A job running on this node, so a stopping bridge can hand it back.
struct Running {
    cancel: Arc<Notify>,
}

struct Bridge {
    hub: Arc<Hub>,
    running: DashMap<u64, Running>,
    next: std::sync::atomic::AtomicU64,
}

pub struct BusBridge;

pub enum BridgeMsg {
    /// A task of the bridge cannot go on: fail, to be restarted.
    Failed(String),
}

pub struct BridgeState {
    bridge: Arc<Bridge>,
    tasks: Vec<JoinHandle<()>>,
}

impl Actor for BusBridge {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = Arc<Hub>;

    async fn pre_start(
        &self,
        myself: ActorRef<BridgeMsg>,
        hub: Arc<Hub>,
    ) -> Result<BridgeState, ActorProcessingErr> {
        let bridge = Arc::new(Bridge {
            hub,
            running: DashMap::new(),
            next: Default::default(),
        });
        let mut tasks = vec![tokio::spawn(listen_results(bridge.clone(), myself))];
        tasks.push(tokio::spawn(pull_all(bridge.clone())));
        tasks.push(tokio::spawn(watch_backlog(bridge.clone())));
        Ok(BridgeState { bridge, tasks })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BridgeMsg>,
        msg: BridgeMsg,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BridgeMsg::Failed(reason) => {
                // ractor skips post_stop when handle fails: stop everything here.
                state.stop().await;
                Err(reason.into())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BridgeMsg>,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop().await;
        Ok(())
    }
}

impl BridgeState {
    /// Stop pulling, then hand running jobs back (nak) so another node takes them.
    async fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.bridge.hub.set_bus_work_ready(false);
        for job in self.bridge.running.iter() {
            job.value().cancel.notify_one();
        }
        // Give cancelled jobs a moment to hand their deliveries back.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.bridge.running.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.bridge.hub.bus.flush().await;
    }
}

/// Whatever way the bridge ends (even a panic in a handler), its tasks end with it.
impl Drop for BridgeState {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for job in self.bridge.running.iter() {
            job.value().cancel.notify_one();
        }
    }
}

/// The subject without `bus.subject_prefix`, if it has it.
fn unprefixed<'a>(hub: &Hub, subject: &'a str) -> Option<&'a str> {
    subject.strip_prefix(hub.outlet.config().subject_prefix.as_str())
}

impl Bridge {
    /// Send an event that cannot be handled to `armoricore.dlq.<subject>`.
    async fn dead_letter(
        &self,
        subject: &str,
        body: &[u8],
        reason: &str,
        delivered: u32,
        why: &str,
    ) -> Result<(), crate::bus::BusError> {
        let hub = &self.hub;
        tracing::warn!(subject, reason, "event dead-lettered");
        hub.metrics
            .bus_dead_letters
            .with_label_values(&[subject, why])
            .inc();
        let letter = dead_letter_body(subject, body, reason, delivered);
        let to = dead_letter_subject(hub.outlet.config(), subject);
        let stored = hub.bus.store_dead_letter(&to, letter).await;
        if let Err(e) = &stored {
            tracing::error!(subject, error = %e, "could not store a dead letter");
        }
        stored
    }
}

/// Listen to the result subjects and push each event to its WebSocket topics.
async fn listen_results(bridge: Arc<Bridge>, myself: ActorRef<BridgeMsg>) {
    let hub = &bridge.hub;
    let mut streams = Vec::new();
    // media.uploaded as a plain subscription too: every node learns who owns a
    // media (for media:{id} joins), not only the node that runs its job.
    // media.cancel reaches every node; the one running that media's job stops it.
    for subject in RESULT_SUBJECTS
        .iter()
        .chain([&events::MEDIA_UPLOADED, &events::MEDIA_CANCEL])
    {
        match hub.bus.subscribe(&hub.outlet.wire_subject(subject)).await {
            Ok(s) => streams.push(s),
            Err(e) => {
                let _ = myself.cast(BridgeMsg::Failed(format!("subscribe {subject}: {e}")));
                return;
            }
        }
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some(m) = all.next().await {
        let Some(subject) = unprefixed(hub, &m.subject) else {
            continue;
        };
        if subject == events::MEDIA_UPLOADED {
            // Work, observed only: the bridge's puller validates and runs it.
            if let Ok(env) = events::parse(subject, &m.body) {
                record_owner(hub, &env.payload);
            }
            continue;
        }
        if subject == events::MEDIA_CANCEL {
            match events::parse(subject, &m.body) {
                Ok(env) => {
                    if let (Some(media), Some(id)) = (&hub.media, id_of(&env.payload, "media_id")) {
                        media.cancel(&id);
                    }
                }
                Err(invalid) => {
                    let _ = bridge
                        .dead_letter(subject, &m.body, &invalid.reason, 1, "invalid")
                        .await;
                }
            }
            continue;
        }
        hub.metrics
            .bus_events_in
            .with_label_values(&[subject])
            .inc();
        match events::parse(subject, &m.body) {
            Ok(env) => push_result(hub, subject, &env),
            Err(invalid) => {
                // A plain event: nothing to retry; a failure to store is logged.
                let _ = bridge
                    .dead_letter(subject, &m.body, &invalid.reason, 1, "invalid")
                    .await;
            }
        }
    }
    let _ = myself.cast(BridgeMsg::Failed("bus subscription ended".into()));
}

/// The WebSocket event a result subject becomes.
fn push_event(subject: &str) -> Option<&'static str> {
    Some(match subject {
        events::MEDIA_READY => "media_ready",
        events::MEDIA_PROGRESS => "media_progress",
        events::MEDIA_FAILED => "media_failed",
        events::NOTIFICATION_SENT => "notification",
        events::TRANSCRIPTION_COMPLETE => "transcription_complete",
        events::TRANSLATION_COMPLETE => "translation_complete",
        events::CAPTIONING_COMPLETE => "captioning_complete",
        _ => return None,
    })
}

/// A JSON id as a topic segment (ids may be strings or numbers).
fn id_of(payload: &Map<String, Value>, key: &str) -> Option<String> {
    match payload.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Remember who owns the media an event names (for `media:{id}` joins).
fn record_owner(hub: &Hub, payload: &Map<String, Value>) {
    if let (Some(media), Some(user)) = (id_of(payload, "media_id"), id_of(payload, "user_id")) {
        hub.media_owners.record(&media, &user);
    }
}

/// `user:{user_id}` and `media:{media_id}` (those the event names) get the event.
fn push_result(hub: &Hub, subject: &str, env: &Envelope) {
    record_owner(hub, &env.payload);
    let Some(event) = push_event(subject) else {
        return;
    };
    let payload = Value::Object(env.payload.clone());
    let user_only = subject == events::NOTIFICATION_SENT;
    let mut topics = Vec::with_capacity(2);
    if let Some(user) = id_of(&env.payload, "user_id") {
        topics.push(format!("user:{user}"));
    }
    if !user_only && let Some(media) = id_of(&env.payload, "media_id") {
        topics.push(format!("media:{media}"));
    }
    // Local only: every node receives the bus event and pushes to its own clients.
    for topic in topics {
        hub.pubsub.broadcast_local(&topic, event, &payload, None);
    }
}

/// Prepare the work queues (retrying while the bus is down), then pull each subject.
async fn pull_all(bridge: Arc<Bridge>) {
    let hub = bridge.hub.clone();
    let mut delay = Duration::from_millis(100);
    while let Err(e) = hub.bus.prepare().await {
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "bus work queues not ready");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    hub.set_bus_work_ready(true);
    // A subject with no handler here is left to other workers unless this node is
    // to answer it `not_supported` (`bus.answer_unsupported`).
    let subjects = WORK_SUBJECTS
        .iter()
        .filter(|s| hub.jobs.get(s).is_some() || hub.config.bus.answer_unsupported);
    // All pullers in this one task: aborting it and awaiting it drops every pending
    // fetch (unsubscribing its pull request) before running jobs are handed back,
    // so the server cannot redeliver them to this stopping node.
    futures_util::future::join_all(subjects.map(|s| pull(bridge.clone(), s))).await;
}

/// How often the bus lag is sampled.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Sample each work queue's backlog into metrics; warn when a consumer reaches
/// `max_ack_pending`, where NATS stops delivering without a word.
async fn watch_backlog(bridge: Arc<Bridge>) {
    let hub = &bridge.hub;
    let limit = hub.config.bus.max_ack_pending.max(0) as u64;
    let mut every = tokio::time::interval(BACKLOG_EVERY);
    loop {
        every.tick().await;
        for subject in WORK_SUBJECTS {
            let Some(b) = hub.bus.backlog(&hub.outlet.wire_subject(subject)).await else {
                continue;
            };
            hub.metrics
                .bus_pending
                .with_label_values(&[subject])
                .set(b.pending as i64);
            hub.metrics
                .bus_ack_pending
                .with_label_values(&[subject])
                .set(b.ack_pending as i64);
            if hub.bus.kind() == "nats" && b.ack_pending >= limit {
                tracing::warn!(
                    subject,
                    ack_pending = b.ack_pending,
                    "bus.max_ack_pending reached: NATS delivers no more until jobs end"
                );
            }
        }
    }
}

/// Take deliveries of `subject` as job slots free up, and run each.
///
/// Each fetch asks for exactly the slots free at that moment and holds them until
/// its messages came or it expired; a slot freed meanwhile starts another fetch at
/// once, so fetches overlap instead of waiting for each other's round trips.
async fn pull(bridge: Arc<Bridge>, subject: &'static str) {
    let hub = bridge.hub.clone();
    let slots = hub
        .jobs
        .get(subject)
        .and_then(|h| h.capacity())
        .map_or(hub.config.bus.concurrency, |c| c.max(1));
    let semaphore = Arc::new(Semaphore::new(slots));
    let wire = hub.outlet.wire_subject(subject);
    // Fetches run inside this task (not spawned), so dropping it drops them all.
    let mut fetches = futures_util::stream::FuturesUnordered::new();
    loop {
        let first = tokio::select! {
            p = semaphore.clone().acquire_owned() => p,
            Some(()) = fetches.next(), if !fetches.is_empty() => continue,
        };
        let Ok(first) = first else {
            return;
        };
        let mut permits = vec![first];
        while permits.len() < slots {
            match semaphore.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut deliveries = match hub.bus.fetch(&wire, permits.len(), FETCH_WAIT).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(subject, error = %e, "bus fetch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                // The queues may be gone (NATS restarted without its store).
                if let Err(e) = hub.bus.prepare().await {
                    tracing::warn!(error = %e, "bus work queues not ready");
                }
                continue;
            }
        };
        let bridge = bridge.clone();
        fetches.push(async move {
            let started = Instant::now();
            let mut got = 0;
            while let Some(delivery) = deliveries.next().await {
                let Some(permit) = permits.pop() else {
                    break; // more than asked for: never happens; it will be redelivered
                };
                got += 1;
                tokio::spawn(handle(bridge.clone(), subject, delivery, permit));
            }
            // Nothing, and well before its wait was up: the server refused the
            // fetch (JetStream recovering, too many pull requests). Hold the
            // slots a moment rather than asking again at once.
            if got == 0 && started.elapsed() < FETCH_WAIT / 2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// Check one delivery and run its job; settle it exactly once.
async fn handle(
    bridge: Arc<Bridge>,
    subject: &'static str,
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
) {
    let hub = bridge.hub.clone();
    let started = Instant::now();
    let metrics = &hub.metrics;
    metrics.bus_events_in.with_label_values(&[subject]).inc();
    if delivery.delivered > 1 {
        metrics.bus_redeliveries.with_label_values(&[subject]).inc();
    }
    let acker: Arc<dyn Acker> = Arc::from(delivery.acker);
    let settle = |r: Result<(), crate::bus::BusError>| {
        if let Err(e) = r {
            tracing::warn!(subject, error = %e, "could not settle a delivery");
        }
    };
    let event = match events::parse(subject, &delivery.body) {
        Ok(event) => event,
        Err(invalid) => {
            let stored = bridge
                .dead_letter(
                    subject,
                    &delivery.body,
                    &invalid.reason,
                    delivery.delivered,
                    "invalid",
                )
                .await;
            // Acknowledged only once its dead letter is kept; else offered again.
            match stored {
                Ok(()) => settle(acker.ack().await),
                Err(_) => settle(
                    acker
                        .nak(Some(backoff(&hub.config.bus, delivery.delivered)))
                        .await,
                ),
            }
            return;
        }
    };
    record_owner(&hub, &event.payload);
    let window = Duration::from_secs(hub.config.bus.dedupe_window_s);
    match hub.handled.begin(&event.event_id, window) {
        Seen::New => {}
        Seen::Done(sent) => {
            metrics.bus_duplicates.with_label_values(&[subject]).inc();
            if let Some(sent) = sent
                && let Err(e) = hub.bus.publish(&sent.subject, sent.body).await
            {
                tracing::warn!(subject, error = %e, "could not republish a result");
                settle(acker.nak(Some(RUNNING_RETRY)).await);
                return;
            }
            settle(acker.ack().await);
            return;
        }
        Seen::Running => {
            // Still running here (the lease lapsed during a NATS outage, or the
            // same event was published twice). A nak would use up its deliveries
            // while the job runs: extend the lease instead and let the running
            // job's ack settle it; a separate copy comes back after ack_wait.
            metrics.bus_duplicates.with_label_values(&[subject]).inc();
            settle(acker.progress().await);
            return;
        }
    }
    let key = bridge
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cancel = Arc::new(Notify::new());
    bridge.running.insert(
        key,
        Running {
            cancel: cancel.clone(),
        },
    );
    metrics.jobs_running.inc();
    if let Some(store) = &hub.store {
        let job = crate::store::jobs::NewJob {
            id: &event.event_id,
            kind: subject,
            payload: &event.payload,
            node: &hub.node_name,
            bus: hub.bus.kind(),
            request: &String::from_utf8_lossy(&delivery.body),
        };
        if let Err(e) = store.job_started(&job).await {
            metrics.store_errors.with_label_values(&["job"]).inc();
            tracing::warn!(subject, error = %e, "could not record a job start");
        }
    }
    let result = run_job(&hub, subject, &event, delivery.delivered, &acker, cancel).await;
    let label = match result {
        Settled::Acked(label, sent) => {
            hub.handled.done(&event.event_id, sent);
            settle(acker.ack().await);
            label
        }
        Settled::Retry(delay) => {
            hub.handled.forget(&event.event_id);
            settle(acker.nak(delay).await);
            "retry"
        }
        Settled::DeadLetter(reason, sent) => {
            let stored = bridge
                .dead_letter(
                    subject,
                    &delivery.body,
                    &reason,
                    delivery.delivered,
                    "max_deliveries",
                )
                .await;
            hub.handled.done(&event.event_id, sent);
            match stored {
                Ok(()) => settle(acker.ack().await),
                // Out of deliveries: the server's max-deliveries advisory makes the
                // rescue store it (see bus::nats).
                Err(_) => settle(acker.nak(None).await),
            }
            "failed"
        }
    };
    metrics.jobs_running.dec();
    metrics.jobs.with_label_values(&[subject, label]).inc();
    metrics.job_seconds.observe(started.elapsed().as_secs_f64());
    bridge.running.remove(&key);
}

/// How a delivery is to be settled.
enum Settled {
    /// Done with it (result or final failure published); the label for metrics.
    Acked(&'static str, Option<Sent>),
    /// Deliver again after the delay.
    Retry(Option<Duration>),
    /// Final failure after the last delivery: `*.failed` published, now the dead letters.
    DeadLetter(String, Option<Sent>),
}

/// Run the job of `event` with its delivery leased; publish its result or failure.
async fn run_job(
    hub: &Arc<Hub>,
    subject: &'static str,
    event: &Envelope,
    delivered: u32,
    acker: &Arc<dyn Acker>,
    cancel: Arc<Notify>,
) -> Settled {
    let config = &hub.config.bus;
    let last_attempt = delivered >= config.max_deliver;
    let failed = events::failed_subject(subject).unwrap_or(subject);
    let Some(handler) = hub.jobs.get(subject) else {
        let payload = jobs::failure_payload(event, "not_supported");
        return match hub.outlet.publish(failed, payload).await {
            Ok(sent) => {
                record(hub, event, JobStatus::Failed, None, Some("not_supported")).await;
                Settled::Acked("not_supported", Some(sent))
            }
            Err(e) => {
                tracing::warn!(subject, error = %e, "could not publish not_supported");
                Settled::Retry(Some(backoff(config, delivered)))
            }
        };
    };
    let job = Job {
        subject,
        event: event.clone(),
        delivered,
        last_attempt,
        outlet: hub.outlet.clone(),
    };
    let mut run = tokio::spawn(async move { handler.run(job).await });
    let lease = Duration::from_millis(config.ack_wait_ms / 3).max(Duration::from_millis(10));
    let mut keep = tokio::time::interval_at(tokio::time::Instant::now() + lease, lease);
    let timeout = tokio::time::sleep(Duration::from_secs(config.job_timeout_s));
    tokio::pin!(timeout);
    let outcome = loop {
        tokio::select! {
            r = &mut run => break match r {
                Ok(outcome) => outcome,
                Err(e) => Outcome::Failed { reason: format!("job crashed: {e}"), retry: true },
            },
            _ = keep.tick() => {
                if let Err(e) = acker.progress().await {
                    tracing::warn!(subject, error = %e, "could not extend a job's lease");
                }
            }
            _ = &mut timeout => {
                run.abort();
                break Outcome::Failed { reason: "job timed out".into(), retry: true };
            }
            _ = cancel.notified() => {
                run.abort();
                tracing::info!(subject, event_id = %event.event_id, "job handed back (node stopping)");
                record(hub, event, JobStatus::Queued, None, Some("handed back: the node stopped")).await;
                return Settled::Retry(None);
            }
        }
    };
    // Final failures: `*.failed`, then acked, or kept in the dead letters when the
    // job was retryable to the end or gave up after its own retries.
    let (reason, details, dead_letter) = match outcome {
        Outcome::Done(payload) => {
            let result = jobs::result_subject(subject).unwrap_or(subject);
            let kept = Value::Object(payload.clone());
            return match hub.outlet.publish(result, payload).await {
                Ok(sent) => {
                    record(hub, event, JobStatus::Done, Some(&kept), None).await;
                    Settled::Acked("done", Some(sent))
                }
                Err(e) => {
                    tracing::warn!(subject, error = %e, "could not publish a job result; retrying the job");
                    let reason = format!("could not publish the result: {e}");
                    record(hub, event, JobStatus::Retrying, None, Some(&reason)).await;
                    Settled::Retry(Some(backoff(config, delivered)))
                }
            };
        }
        Outcome::Failed { reason, retry } if retry && !last_attempt => {
            tracing::warn!(subject, event_id = %event.event_id, delivered, %reason, "job failed; will retry");
            record(hub, event, JobStatus::Retrying, None, Some(&reason)).await;
            return Settled::Retry(Some(backoff(config, delivered)));
        }
        Outcome::Failed { reason, retry } => {
            let dead = retry.then(|| format!("max deliveries reached: {reason}"));
            (reason, Map::new(), dead)
        }
        Outcome::GaveUp { reason, details } => (reason.clone(), details, Some(reason)),
    };
    tracing::warn!(subject, event_id = %event.event_id, delivered, %reason, "job failed");
    let mut payload = jobs::failure_payload(event, &reason);
    payload.extend(details);
    let sent = match hub.outlet.publish(failed, payload).await {
        Ok(sent) => Some(sent),
        Err(e) => {
            tracing::warn!(subject, error = %e, "could not publish a job failure; retrying");
            record(hub, event, JobStatus::Retrying, None, Some(&reason)).await;
            return Settled::Retry(Some(backoff(config, delivered)));
        }
    };
    record(hub, event, JobStatus::Failed, None, Some(&reason)).await;
    match dead_letter {
        Some(why) => Settled::DeadLetter(why, sent),
        None => Settled::Acked("failed", sent),
    }
}

/// Record a job's new state; a database error is logged, never the job's failure.
async fn record(
    hub: &Hub,
    event: &Envelope,
    status: JobStatus,
    result: Option<&Value>,
    error: Option<&str>,
) {
    let Some(store) = &hub.store else {
        return;
    };
    if let Err(e) = store
        .job_status(&event.event_id, status, result, error)
        .await
    {
        hub.metrics.store_errors.with_label_values(&["job"]).inc();
        tracing::warn!(event_id = %event.event_id, error = %e, "could not record a job's state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_ids_dedupe_within_the_window() {
        let h = Handled::default();
        let w = Duration::from_secs(60);
        assert_eq!(h.begin("a", w), Seen::New);
        assert_eq!(h.begin("a", w), Seen::Running);
        let sent = Sent {
            subject: "media.ready".into(),
            body: bytes::Bytes::from_static(b"{}"),
        };
        h.done("a", Some(sent.clone()));
        assert_eq!(h.begin("a", w), Seen::Done(Some(sent)));
        assert_eq!(h.begin("a", Duration::ZERO), Seen::New, "window passed");
        h.forget("a");
        assert_eq!(h.begin("a", w), Seen::New);
    }
}
