//! Chat moderation through an OpenAI-compatible `POST /v1/moderations`.
//!
//! ```text
//! before  new_message → check → flagged: moderation.flagged, and (withhold) an
//!                                error reply, nothing stored or broadcast
//!                     → clean (or the check failed and fail_open): published
//! after   new_message → published → check in the background → flagged:
//!                                moderation.flagged, and (withhold) deleted:
//!                                msg_deleted {id, offset} to the topic
//! ```

use std::time::Duration;

use serde_json::{Value, json};

use super::openai::read;
use super::{AiError, Meter, from_http, http_client};
use crate::config::{ModerationConfig, OpenAiConfig};

/// When messages are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Before the broadcast: a flagged message can be refused outright.
    Before,
    /// After the broadcast: no added latency; a flagged message is deleted.
    After,
}

/// What the moderation endpoint said about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub flagged: bool,
    /// The categories flagged (`harassment`, `hate/threatening`, ...).
    pub categories: Vec<String>,
    /// The highest category score.
    pub score: f64,
}

pub struct Moderator {
    http: reqwest::Client,
    base: String,
    key: String,
    organization: String,
    model: String,
    pub mode: Mode,
    pub withhold: bool,
    pub fail_open: bool,
    prefixes: Vec<String>,
    meter: Meter,
}

impl Moderator {
    /// The moderator `[ai.moderation]` asks for; `None` when it is off.
    pub fn from_config(
        m: &ModerationConfig,
        openai: &OpenAiConfig,
        meter: Meter,
    ) -> Result<Option<Moderator>, AiError> {
        let mode = match m.mode.as_str() {
            "off" => return Ok(None),
            "before" => Mode::Before,
            "after" => Mode::After,
            other => {
                return Err(AiError::Input(format!(
                    "ai.moderation.mode: {other:?} is not off, before or after"
                )));
            }
        };
        let timeout = Duration::from_millis(m.timeout_ms.max(1));
        let http = http_client(timeout)?;
        Ok(Some(Moderator {
            http,
            base: openai.base_url.trim_end_matches('/').to_string(),
            key: openai.api_key.clone(),
            organization: openai.organization.clone(),
            model: m.model.clone(),
            mode,
            withhold: m.withhold,
            fail_open: m.fail_open,
            prefixes: m.topics.clone(),
            meter,
        }))
    }

    /// Whether messages on `topic` are checked.
    pub fn covers(&self, topic: &str) -> bool {
        self.prefixes.iter().any(|p| topic.starts_with(p.as_str()))
    }

    /// Check `text` (one request: a message is not worth a retry's delay).
    pub async fn check(&self, text: &str) -> Result<Verdict, AiError> {
        let started = std::time::Instant::now();
        let result = self.request(text).await;
        let m = &self.meter.metrics;
        m.ai_request_seconds
            .with_label_values(&["openai", "moderate"])
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.class(),
        };
        m.ai_requests
            .with_label_values(&["openai", "moderate", label])
            .inc();
        result
    }

    async fn request(&self, text: &str) -> Result<Verdict, AiError> {
        let mut request = self
            .http
            .post(format!("{}/v1/moderations", self.base))
            .json(&json!({"model": self.model, "input": text}));
        if !self.key.is_empty() {
            request = request.bearer_auth(&self.key);
        }
        if !self.organization.is_empty() {
            request = request.header("OpenAI-Organization", &self.organization);
        }
        let response = request.send().await.map_err(|e| from_http("openai", &e))?;
        let body = read(response, "openai").await?;
        verdict(&body)
    }
}

/// `{"results": [{"flagged", "categories": {name: bool}, "category_scores": {name: f}}]}`.
pub fn verdict(body: &Value) -> Result<Verdict, AiError> {
    let result = body["results"]
        .get(0)
        .ok_or_else(|| AiError::Mismatch(format!("moderation: no results in {body}")))?;
    let flagged = result["flagged"]
        .as_bool()
        .ok_or_else(|| AiError::Mismatch(format!("moderation: no flagged in {body}")))?;
    let mut categories: Vec<String> = result["categories"]
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    categories.sort();
    let score = result["category_scores"]
        .as_object()
        .map(|s| s.values().filter_map(Value::as_f64).fold(0.0, f64::max))
        .unwrap_or(0.0);
    Ok(Verdict {
        flagged,
        categories,
        score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moderation_answer_is_read() {
        let body = json!({"id": "modr-1", "model": "omni-moderation-latest", "results": [{
            "flagged": true,
            "categories": {"harassment": true, "hate": false, "violence": true},
            "category_scores": {"harassment": 0.91, "hate": 0.02, "violence": 0.55},
            "category_applied_input_types": {"harassment": ["text"]}}]});
        let v = verdict(&body).unwrap();
        assert!(v.flagged);
        assert_eq!(v.categories, vec!["harassment", "violence"]);
        assert_eq!(v.score, 0.91);
        assert!(verdict(&json!({"results": []})).is_err());
    }
}
