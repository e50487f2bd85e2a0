//! Notifications: push through FCM HTTP v1 and APNs, email over SMTP.
//!
//! Each provider sends one message to one target and says how it went, classified
//! from the provider's own error bodies:
//!
//! ```text
//! Failure::Transient    5xx, 429, timeouts, connection errors, SMTP 4xx
//!                       → retried with exponential backoff and jitter, waiting at
//!                         least the provider's Retry-After
//! Failure::InvalidToken FCM UNREGISTERED / INVALID_ARGUMENT on the token, APNs
//!                       BadDeviceToken / DeviceTokenNotForTopic / Unregistered (410)
//!                       → never retried; notification.token_invalid is published
//! Failure::Permanent    the message itself is refused (payload too large, SMTP 5xx)
//!                       → never retried
//! Failure::Auth         our credentials are refused (FCM THIRD_PARTY_AUTH_ERROR or a
//!                       refused OAuth grant, APNs InvalidProviderToken)
//!                       → the provider is marked down (`/ready` says so) and its
//!                         jobs fail fast with the reason until it answers again
//! ```

pub mod apns;
pub mod email;
pub mod fcm;
pub mod request;
pub mod sender;

use std::time::{Duration, SystemTime};

/// How one send failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error("{reason}")]
    InvalidToken { reason: String },
    #[error("{reason}")]
    Permanent { reason: String },
    #[error("{reason}")]
    Auth { reason: String },
}

impl Failure {
    pub fn transient(reason: impl Into<String>) -> Failure {
        Failure::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The metric label.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Transient { .. } => "transient",
            Failure::InvalidToken { .. } => "invalid_token",
            Failure::Permanent { .. } => "permanent",
            Failure::Auth { .. } => "auth",
        }
    }

    /// A request that never got an answer: timeouts and connection errors retry.
    pub fn from_http(provider: &str, e: &reqwest::Error) -> Failure {
        Failure::transient(format!("{provider}: {e}"))
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The HTTP client for push providers: HTTP/2 only (TLS with ALPN h2 for real
/// hosts, prior knowledge for `http://` stand-ins), connections kept and shared.
pub fn push_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(300))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
