//! Delivering one notification to all its targets, with retries.
//!
//! Each target (a device token, or the email) is sent on its own: a transient
//! failure is retried up to `notifications.max_attempts` times, waiting
//! `retry_initial_ms` doubling up to `retry_max_ms` (with jitter) and never less than
//! the provider's `Retry-After`; anything else is final at once. Sends per provider
//! are bounded by its `concurrency`. A provider that refused our credentials is down
//! for `down_for_s`: meanwhile its sends fail at once with the reason.
//!
//! Routing: Android and web tokens go to FCM; iOS tokens to APNs when it is
//! configured, else to FCM (apps registered through Firebase); email to SMTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::Failure;
use super::apns::{Apns, ApnsSettings};
use super::email::Mailer;
use super::fcm::Fcm;
use super::request::{Device, Kind, Notification, Platform};
use crate::config::NotificationsConfig;
use crate::metrics::Metrics;

/// Why the providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Fcm(#[from] super::fcm::FcmError),
    #[error(transparent)]
    Apns(#[from] super::apns::ApnsError),
    #[error(transparent)]
    Email(#[from] super::email::EmailError),
    #[error("notifications: HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// One provider, its send slots and rate, and whether it is down.
struct Slot<P> {
    provider: P,
    slots: Semaphore,
    /// Sends per second (`rate_per_s`), when limited.
    rate: Option<Mutex<crate::limits::TokenBucket>>,
    down: Mutex<Option<(Instant, String)>>,
}

impl<P> Slot<P> {
    fn new(provider: P, concurrency: usize, rate_per_s: u32) -> Slot<P> {
        Slot {
            provider,
            slots: Semaphore::new(concurrency.max(1)),
            rate: (rate_per_s > 0)
                .then(|| Mutex::new(crate::limits::TokenBucket::new(rate_per_s, rate_per_s))),
            down: Mutex::new(None),
        }
    }

    /// Wait for a send token, if the provider's rate is limited.
    async fn paced(&self) {
        let Some(rate) = &self.rate else {
            return;
        };
        loop {
            let wait = rate.lock().take_or_wait();
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// The reason it is down, while it is.
    fn down_reason(&self) -> Option<String> {
        let mut down = self.down.lock();
        match down.as_ref() {
            Some((until, reason)) if Instant::now() < *until => Some(reason.clone()),
            Some(_) => {
                *down = None;
                None
            }
            None => None,
        }
    }
}

/// Which provider a target goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Fcm,
    Apns,
    Email,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Fcm => "fcm",
            Provider::Apns => "apns",
            Provider::Email => "email",
        }
    }
}

/// How one target ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sent {
        provider: Provider,
        id: String,
    },
    /// The provider says the token is dead: report it, stop using it.
    InvalidToken {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// One target's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    /// The device (pushes), `None` for an email.
    pub device: Option<Device>,
    pub delivery: Delivery,
    pub attempts: u32,
}

/// The node's notification providers.
pub struct Sender {
    fcm: Option<Slot<Fcm>>,
    apns: Option<Slot<Apns>>,
    email: Option<Slot<Mailer>>,
    config: NotificationsConfig,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// The providers `config` sets up; `None` when none is.
    pub fn from_config(
        config: &NotificationsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Sender>, SetupError> {
        let timeout = Duration::from_secs(config.timeout_s.max(1));
        let client = super::push_client(timeout)?;
        let fcm = match config.fcm.service_account_file.as_str() {
            "" => None,
            path => Some(Slot::new(
                Fcm::from_file(path, &config.fcm.base_url, client.clone())?,
                config.fcm.concurrency,
                config.fcm.rate_per_s,
            )),
        };
        let a = &config.apns;
        let apns = match a.key_file.as_str() {
            "" => None,
            key_file => {
                let base_url = match (a.base_url.as_str(), a.environment.as_str()) {
                    ("", "sandbox") => super::apns::SANDBOX,
                    ("", _) => super::apns::PRODUCTION,
                    (url, _) => url,
                };
                let settings = ApnsSettings {
                    key_file,
                    key_id: &a.key_id,
                    team_id: &a.team_id,
                    topic: &a.topic,
                    base_url,
                };
                Some(Slot::new(
                    Apns::new(&settings, client)?,
                    a.concurrency,
                    a.rate_per_s,
                ))
            }
        };
        let email = match config.email.smtp_host.as_str() {
            "" => None,
            _ => Some(Slot::new(
                Mailer::new(&config.email)?,
                config.email.concurrency,
                config.email.rate_per_s,
            )),
        };
        if fcm.is_none() && apns.is_none() && email.is_none() {
            return Ok(None);
        }
        Ok(Some(Sender {
            fcm,
            apns,
            email,
            config: config.clone(),
            metrics,
        }))
    }

    /// Each configured provider and whether it is up (for `/ready`).
    pub fn status(&self) -> Vec<(&'static str, Option<String>)> {
        let mut out = Vec::new();
        if let Some(s) = &self.fcm {
            out.push(("fcm", s.down_reason()));
        }
        if let Some(s) = &self.apns {
            out.push(("apns", s.down_reason()));
        }
        if let Some(s) = &self.email {
            out.push(("email", s.down_reason()));
        }
        out
    }

    fn route(&self, platform: Platform) -> Option<Provider> {
        match platform {
            Platform::Ios if self.apns.is_some() => Some(Provider::Apns),
            _ if self.fcm.is_some() => Some(Provider::Fcm),
            _ => None,
        }
    }

    /// Send `n` to every target; one report per target, in order.
    pub async fn deliver(&self, n: &Notification) -> Vec<TargetReport> {
        match &n.kind {
            Kind::Email(email) => {
                let report = match &self.email {
                    None => TargetReport {
                        device: None,
                        delivery: Delivery::Failed {
                            reason: "email is not configured (notifications.email.smtp_host)"
                                .into(),
                        },
                        attempts: 0,
                    },
                    Some(slot) => {
                        self.with_retries(Provider::Email, slot, None, || slot.provider.send(email))
                            .await
                    }
                };
                vec![report]
            }
            Kind::Push { push, devices } => {
                let sends = devices.iter().map(|device| async move {
                    match self.route(device.platform) {
                        Some(Provider::Apns) => {
                            let slot = self.apns.as_ref().expect("routed to a configured provider");
                            self.with_retries(Provider::Apns, slot, Some(device), || {
                                slot.provider.send(push, &device.token)
                            })
                            .await
                        }
                        Some(_) => {
                            let slot = self.fcm.as_ref().expect("routed to a configured provider");
                            self.with_retries(Provider::Fcm, slot, Some(device), || {
                                slot.provider.send(push, device)
                            })
                            .await
                        }
                        None => TargetReport {
                            device: Some(device.clone()),
                            delivery: Delivery::Failed {
                                reason: format!(
                                    "no push provider for {} tokens (notifications.fcm / notifications.apns)",
                                    device.platform.as_str()
                                ),
                            },
                            attempts: 0,
                        },
                    }
                });
                futures_util::future::join_all(sends).await
            }
        }
    }

    /// Send through `slot` until sent or final; transient failures back off.
    async fn with_retries<P, F, Fut>(
        &self,
        provider: Provider,
        slot: &Slot<P>,
        device: Option<&Device>,
        send: F,
    ) -> TargetReport
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<String, Failure>>,
    {
        let name = provider.name();
        let max = self.config.max_attempts.max(1);
        let mut attempts = 0;
        let delivery = loop {
            if let Some(reason) = slot.down_reason() {
                self.count(name, "provider_down");
                break Delivery::Failed {
                    reason: format!("{name} is down: {reason}"),
                };
            }
            attempts += 1;
            let result = {
                let _slot = slot.slots.acquire().await.expect("never closed");
                slot.paced().await;
                self.metrics
                    .notify_in_flight
                    .with_label_values(&[name])
                    .inc();
                let started = Instant::now();
                let result = send().await;
                self.metrics
                    .notify_seconds
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .notify_in_flight
                    .with_label_values(&[name])
                    .dec();
                result
            };
            match result {
                Ok(id) => {
                    self.count(name, "sent");
                    break Delivery::Sent { provider, id };
                }
                Err(Failure::InvalidToken { reason }) => {
                    self.count(name, "invalid_token");
                    break Delivery::InvalidToken { reason };
                }
                Err(Failure::Permanent { reason }) => {
                    self.count(name, "permanent");
                    break Delivery::Failed { reason };
                }
                Err(Failure::Auth { reason }) => {
                    self.count(name, "auth");
                    let until = Instant::now() + Duration::from_secs(self.config.down_for_s);
                    tracing::error!(provider = name, %reason, "provider refused our credentials: down");
                    *slot.down.lock() = Some((until, reason.clone()));
                    break Delivery::Failed { reason };
                }
                Err(Failure::Transient {
                    reason,
                    retry_after,
                }) => {
                    let wait = self.backoff(attempts, retry_after);
                    match wait {
                        Some(wait) if attempts < max => {
                            self.metrics.notify_retries.with_label_values(&[name]).inc();
                            tracing::info!(provider = name, attempts, retry_in_ms = wait.as_millis() as u64, %reason, "send failed; retrying");
                            tokio::time::sleep(wait).await;
                        }
                        _ => {
                            self.count(name, "transient");
                            break Delivery::Failed {
                                reason: format!("{reason} (after {attempts} attempts)"),
                            };
                        }
                    }
                }
            }
        };
        TargetReport {
            device: device.cloned(),
            delivery,
            attempts,
        }
    }

    /// The wait before retry `attempts` + 1: exponential with jitter, at least the
    /// provider's Retry-After; `None` when that is longer than we wait.
    fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let c = &self.config;
        let ours = crate::bus::exponential_backoff(
            Duration::from_millis(c.retry_initial_ms),
            attempts.saturating_sub(1),
            Duration::from_millis(c.retry_max_ms),
        );
        match retry_after {
            Some(theirs) if theirs > Duration::from_secs(c.retry_after_max_s) => None,
            Some(theirs) => Some(ours.max(theirs)),
            None => Some(ours),
        }
    }

    fn count(&self, provider: &str, result: &str) {
        self.metrics
            .notify_sends
            .with_label_values(&[provider, result])
            .inc();
    }
}
