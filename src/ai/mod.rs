//! AI jobs: transcription (OpenAI-compatible `/v1/audio/transcriptions`),
//! translation (OpenAI chat completions or Anthropic Messages) and captions
//! (SRT and WebVTT) from timed segments.
//!
//! ```text
//! transcription.requested {media_id, file_path, language?}
//!   fetch (path | http(s) URL | storage key) → ffmpeg: mono 16 kHz audio
//!   → chunks under the upload limit, cut in silences → one request per chunk
//!   → segments stitched at their chunk's offset → transcription.complete
//!   → captions (captions/{lang}.vtt|.srt) → captioning.complete
//!   → translated captions for ai.caption_languages → captioning.complete each
//! translation.requested {text | segments, to_language, from_language?}
//!   → batches of [{id, text}] to OpenAI or Anthropic → the same ids back, checked
//!   → translation.complete (segment timing kept, never produced by the model)
//! ```
//!
//! Provider errors: 429, 5xx (and Anthropic's 529), timeouts and connection errors
//! are retried with exponential backoff and jitter, waiting at least `Retry-After`;
//! 401/403 and other 4xx are final, with the provider's own message.

pub mod anthropic;
pub mod audio;
pub mod captions;
pub mod moderation;
pub mod openai;
pub mod translate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::MediaError;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// Worth trying again later: 429, 5xx, timeouts, connection errors.
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The request is refused as it is (400, 404, 422): trying again changes nothing.
    #[error("{reason}")]
    Permanent { reason: String },
    /// Our credentials are refused (401, 403).
    #[error("{reason}")]
    Auth { reason: String },
    /// The job's input: a missing file, no audio, a bad field.
    #[error("{0}")]
    Input(String),
    /// A reply that does not answer what was asked (segments dropped, merged or
    /// renamed, not JSON): asked again, then failed; never published.
    #[error("{0}")]
    Mismatch(String),
    /// A reply cut at the token limit: asked again with less.
    #[error("{0}")]
    Truncated(String),
    /// No provider configured for what the job needs.
    #[error("{0}")]
    NotConfigured(String),
    #[error(transparent)]
    Media(#[from] MediaError),
}

impl AiError {
    /// Whether asking again may help.
    pub fn retryable(&self) -> bool {
        matches!(self, AiError::Transient { .. } | AiError::Mismatch(_))
    }

    /// The metric label.
    pub fn class(&self) -> &'static str {
        match self {
            AiError::Transient { .. } => "transient",
            AiError::Permanent { .. } => "permanent",
            AiError::Auth { .. } => "auth",
            AiError::Input(_) => "input",
            AiError::Mismatch(_) => "mismatch",
            AiError::Truncated(_) => "truncated",
            AiError::NotConfigured(_) => "not_configured",
            AiError::Media(_) => "media",
        }
    }
}

/// Tokens a request used, when the provider says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

/// The HTTP client of a provider: `timeout` per request, connecting within 10 s.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, AiError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| AiError::Permanent {
            reason: format!("http client: {e}"),
        })
}

/// A request that got no answer: timeouts and connection errors are retried.
pub fn from_http(provider: &str, e: &reqwest::Error) -> AiError {
    AiError::Transient {
        reason: format!("{provider}: {e}"),
        retry_after: None,
    }
}

/// An error answer, from its status and the provider's error body: OpenAI's
/// `{"error": {"message", "type", "code"}}` or Anthropic's
/// `{"type": "error", "error": {"type", "message"}}`.
pub fn classify(provider: &str, status: u16, body: &str, retry_after: Option<Duration>) -> AiError {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let e = &v["error"];
    let kind = e["code"]
        .as_str()
        .or_else(|| e["type"].as_str())
        .unwrap_or_default();
    let message = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(200).collect());
    let reason = if kind.is_empty() {
        format!("{provider}: {status}: {message}")
    } else {
        format!("{provider}: {status} {kind}: {message}")
    };
    match status {
        401 | 403 => AiError::Auth { reason },
        408 | 409 | 429 | 500..=599 => AiError::Transient {
            reason,
            retry_after,
        },
        _ => AiError::Permanent { reason },
    }
}

/// How provider requests are retried.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// A `Retry-After` longer than this is not waited for: the job fails.
    pub retry_after_max: Duration,
}

impl Retry {
    /// The wait before attempt `attempt` + 1, or `None` when it is not worth it.
    fn wait(&self, attempt: u32, e: &AiError) -> Option<Duration> {
        if attempt >= self.attempts || !e.retryable() {
            return None;
        }
        let ours = crate::bus::exponential_backoff(self.initial, attempt - 1, self.max);
        match e {
            AiError::Transient {
                retry_after: Some(theirs),
                ..
            } if *theirs > self.retry_after_max => None,
            AiError::Transient {
                retry_after: Some(theirs),
                ..
            } => Some(ours.max(*theirs)),
            _ => Some(ours),
        }
    }
}

/// Counts and times provider requests.
#[derive(Clone)]
pub struct Meter {
    pub metrics: Arc<Metrics>,
}

impl Meter {
    /// Run `op` (one request to `provider` for `what`) until it succeeds, fails
    /// for good or the attempts run out; each request counted and timed.
    pub async fn retrying<T, Fut>(
        &self,
        retry: &Retry,
        provider: &'static str,
        what: &'static str,
        mut op: impl FnMut() -> Fut,
    ) -> Result<T, AiError>
    where
        Fut: std::future::Future<Output = Result<T, AiError>>,
    {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = op().await;
            self.metrics
                .ai_request_seconds
                .with_label_values(&[provider, what])
                .observe(started.elapsed().as_secs_f64());
            let label = match &result {
                Ok(_) => "ok",
                Err(e) => e.class(),
            };
            self.metrics
                .ai_requests
                .with_label_values(&[provider, what, label])
                .inc();
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(wait) = retry.wait(attempt, &e) else {
                return Err(e);
            };
            tracing::warn!(provider, what, attempt, error = %e, ?wait, "AI request failed: retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    pub fn tokens(&self, provider: &'static str, usage: Usage) {
        let t = &self.metrics.ai_tokens;
        t.with_label_values(&[provider, "input"])
            .inc_by(usage.input);
        t.with_label_values(&[provider, "output"])
            .inc_by(usage.output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_are_classified_from_their_bodies() {
        let openai = r#"{"error": {"message": "Rate limit reached for whisper-1", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}"#;
        let e = classify("openai", 429, openai, Some(Duration::from_secs(2)));
        assert!(
            matches!(&e, AiError::Transient { reason, retry_after: Some(_) } if reason == "openai: 429 rate_limit_exceeded: Rate limit reached for whisper-1"),
            "{e:?}"
        );
        let anthropic =
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#;
        assert!(matches!(
            classify("anthropic", 529, anthropic, None),
            AiError::Transient { .. }
        ));
        let auth = r#"{"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}"#;
        assert!(matches!(
            classify("anthropic", 401, auth, None),
            AiError::Auth { reason } if reason.contains("invalid x-api-key")
        ));
        let bad = r#"{"error": {"message": "Invalid file format.", "type": "invalid_request_error", "param": null, "code": null}}"#;
        assert!(matches!(
            classify("openai", 400, bad, None),
            AiError::Permanent { reason } if reason == "openai: 400 invalid_request_error: Invalid file format."
        ));
        assert!(matches!(
            classify("openai", 502, "<html>bad gateway</html>", None),
            AiError::Transient { reason, .. } if reason.contains("bad gateway")
        ));
    }

    #[test]
    fn retries_back_off_and_respect_retry_after() {
        let r = Retry {
            attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(60),
        };
        let busy = |s| AiError::Transient {
            reason: "x".into(),
            retry_after: Some(Duration::from_secs(s)),
        };
        assert!(r.wait(1, &busy(5)).unwrap() >= Duration::from_secs(5));
        assert_eq!(r.wait(1, &busy(600)), None, "longer than we wait");
        assert_eq!(r.wait(3, &busy(1)), None, "attempts used up");
        let w = r.wait(2, &AiError::Mismatch("m".into())).unwrap();
        assert!(
            w >= Duration::from_millis(200) && w <= Duration::from_millis(300),
            "{w:?}"
        );
        assert_eq!(r.wait(1, &AiError::Permanent { reason: "p".into() }), None);
    }
}
