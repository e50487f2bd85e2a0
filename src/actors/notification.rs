//! The `notification.requested` jobs: one actor per notification, under the
//! notifications' [`TaskSupervisor`](crate::supervisors::tasks).
//!
//! ```text
//! bridge → NotifyJobs::run → TaskSupervisor ─spawn_linked→ task actor: sends to
//!                                                          every target (notify::sender),
//!                                                          answers, stops
//! done, ≥ 1 target sent   → notification.sent {user_id, notification_id, notification_type,
//!                            sent_at, provider_ids, attempts, failed?} (+ `notification` push
//!                            to user:{user_id}, by the bridge)
//! dead tokens             → notification.token_invalid {user_id, platform, token} each
//! nothing sent            → notification.failed {notification_id, reason, attempts} and the
//!                            dead-letter subject (the sender already retried what it could)
//! the actor panics        → counted, and the bridge delivers the job again
//! a repeated notification_id (within bus.dedupe_window_s, or already done in the
//!                            database) → not sent again; its first result is published again
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::bus::events;
use crate::jobs::{Job, JobHandler, Outcome};
use crate::notify::request::{Kind, Notification};
use crate::notify::sender::{Delivery, Sender, TargetReport};
use crate::supervisors::tasks::Tasks;

pub type Reports = Vec<TargetReport>;
/// When a notification was sent, and its `notification.sent` payload.
type Sent = (Instant, Map<String, Value>);

/// The node's notification sending: the providers and the current supervisor.
pub struct NotifyService {
    pub sender: Arc<Sender>,
    /// The task supervisor's handle, set by the root supervisor.
    pub tasks: Tasks<Reports>,
    limit: usize,
    /// Notifications sent recently: notification_id → (when, result payload).
    sent: Mutex<Recent>,
    window: Duration,
    store: Option<Arc<crate::store::Store>>,
}

impl NotifyService {
    pub fn new(
        sender: Sender,
        limit: usize,
        window: Duration,
        store: Option<Arc<crate::store::Store>>,
    ) -> NotifyService {
        NotifyService {
            sender: Arc::new(sender),
            tasks: Tasks::default(),
            limit: limit.max(1),
            sent: Mutex::default(),
            window,
            store,
        }
    }

    /// Send `n` in its own actor; `None` if that actor died first.
    async fn run(&self, n: Notification) -> Option<Reports> {
        let sender = self.sender.clone();
        self.tasks
            .run(Box::pin(async move { sender.deliver(&n).await }))
            .await
    }

    /// The result of an earlier send of `notification_id`, if one happened: this
    /// node's recent ones, else a finished job in the database with that id.
    async fn earlier(&self, notification_id: &str, event_id: &str) -> Option<Map<String, Value>> {
        {
            let mut sent = self.sent.lock();
            sent.expire(self.window);
            if let Some((_, payload)) = sent.by_id.get(notification_id) {
                return Some(payload.clone());
            }
        }
        let store = self.store.as_ref()?;
        let job = store
            .done_job_for(events::NOTIFICATION_REQUESTED, notification_id, event_id)
            .await
            .ok()??;
        job.result.and_then(|r| r.as_object().cloned())
    }
}

/// Notifications sent within the dedupe window, expired oldest first (a full
/// sweep on every job would cost the whole window's size each time).
#[derive(Default)]
struct Recent {
    by_id: HashMap<String, Sent>,
    order: VecDeque<(Instant, String)>,
}

impl Recent {
    fn insert(&mut self, id: String, payload: Map<String, Value>) {
        let now = Instant::now();
        self.order.push_back((now, id.clone()));
        self.by_id.insert(id, (now, payload));
    }

    fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.order.front()
            && at.elapsed() >= window
        {
            let (at, id) = self.order.pop_front().expect("a front");
            // A later send of the same id keeps its own, newer entry.
            if self.by_id.get(&id).is_some_and(|(t, _)| *t == at) {
                self.by_id.remove(&id);
            }
        }
    }
}

/// The `notification.requested` handler.
pub struct NotifyJobs(pub Arc<NotifyService>);

#[async_trait]
impl JobHandler for NotifyJobs {
    fn capacity(&self) -> Option<usize> {
        Some(self.0.limit)
    }

    async fn run(&self, job: Job) -> Outcome {
        let n = match Notification::from_payload(&job.event.payload, &job.event.event_id) {
            Ok(n) => n,
            Err(e) => {
                return Outcome::Failed {
                    reason: e.to_string(),
                    retry: false,
                };
            }
        };
        if let Some(payload) = self
            .0
            .earlier(&n.notification_id, &job.event.event_id)
            .await
        {
            tracing::info!(notification_id = %n.notification_id, "repeated notification_id: not sent again");
            return Outcome::Done(payload);
        }
        let Some(reports) = self.0.run(n.clone()).await else {
            return Outcome::Failed {
                reason: "notification actor crashed".into(),
                retry: true,
            };
        };
        let outcome = outcome(&n, &reports, &job);
        if let Outcome::Done(payload) = &outcome {
            self.0
                .sent
                .lock()
                .insert(n.notification_id.clone(), payload.clone());
        }
        outcome
    }
}

/// The job's result from its targets' reports; dead tokens are reported on the way.
fn outcome(n: &Notification, reports: &[TargetReport], job: &Job) -> Outcome {
    let attempts: u32 = reports.iter().map(|r| r.attempts).sum();
    let mut provider_ids = Vec::new();
    let mut failed = Vec::new();
    for r in reports {
        let target = r.device.as_ref().map_or_else(
            || json!({"email": true}),
            |d| json!({"platform": d.platform.as_str(), "token": d.token}),
        );
        match &r.delivery {
            Delivery::Sent { provider, id } => {
                provider_ids.push(json!({"provider": provider.name(), "id": id}));
            }
            Delivery::InvalidToken { reason } => {
                if let Some(d) = &r.device {
                    let mut payload = Map::new();
                    payload.insert("user_id".into(), json!(n.user_id));
                    payload.insert("platform".into(), json!(d.platform.as_str()));
                    payload.insert("token".into(), json!(d.token));
                    payload.insert("notification_id".into(), json!(n.notification_id));
                    payload.insert("reason".into(), json!(reason));
                    job.outlet.emit(events::NOTIFICATION_TOKEN_INVALID, payload);
                }
                failed.push(json!({"target": target, "reason": reason}));
            }
            Delivery::Failed { reason } => failed.push(json!({"target": target, "reason": reason})),
        }
    }
    if provider_ids.is_empty() {
        let reasons: Vec<String> = failed
            .iter()
            .filter_map(|f| f["reason"].as_str().map(str::to_string))
            .collect();
        let mut details = Map::new();
        details.insert("notification_id".into(), json!(n.notification_id));
        details.insert("notification_type".into(), json!(n.kind.name()));
        details.insert("attempts".into(), json!(attempts));
        details.insert("failed".into(), Value::Array(failed));
        return Outcome::GaveUp {
            reason: format!("not sent: {}", reasons.join("; ")),
            details,
        };
    }
    let mut payload = Map::new();
    payload.insert("user_id".into(), json!(n.user_id));
    payload.insert("notification_id".into(), json!(n.notification_id));
    payload.insert("notification_type".into(), json!(n.kind.name()));
    let sent_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    payload.insert("sent_at".into(), json!(sent_at));
    payload.insert("provider_ids".into(), Value::Array(provider_ids));
    payload.insert("attempts".into(), json!(attempts));
    if let Kind::Push { push, .. } = &n.kind {
        payload.insert("title".into(), json!(push.title));
        payload.insert("body".into(), json!(push.body));
    }
    if !failed.is_empty() {
        payload.insert("failed".into(), Value::Array(failed));
    }
    Outcome::Done(payload)
}
